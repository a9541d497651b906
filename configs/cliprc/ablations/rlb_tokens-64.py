# CLIP-RC ablation on VOC 15/5 inductive (40k iterations), CLIP-RC
# Table 6: M = 64 frozen RLB tokens: 148.9 GFLOPs, hIoU 89.1
# (M = 16, the main config: 126.7 GFLOPs, hIoU 88.4).
_base_ = ['../vit-b16_voc-15-5_inductive.py']
model = dict(region_bridge=dict(num_tokens=64))
