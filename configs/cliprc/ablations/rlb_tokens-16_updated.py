# CLIP-RC ablation on VOC 15/5 inductive (40k iterations), CLIP-RC
# Table 6: M = 16 updated (trainable) RLB tokens: 126.7 GFLOPs,
# pAcc / hIoU / S / U = 95.8 / 87.9 / 93.3 / 83.1.
_base_ = ['../vit-b16_voc-15-5_inductive.py']
model = dict(region_bridge=dict(update=True))
