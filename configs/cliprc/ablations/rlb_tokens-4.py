# CLIP-RC ablation on VOC 15/5 inductive (40k iterations), CLIP-RC
# Table 6: M = 4 frozen RLB tokens: 121.2 GFLOPs, hIoU 87.3
# (M = 16, the main config: 126.7 GFLOPs, hIoU 88.4).
_base_ = ['../vit-b16_voc-15-5_inductive.py']
model = dict(region_bridge=dict(num_tokens=4))
