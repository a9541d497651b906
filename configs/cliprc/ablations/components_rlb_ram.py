# CLIP-RC ablation on VOC 15/5 inductive (40k iterations), CLIP-RC
# Table 5 row 3 (+RLB +RAM): 95.4 / 87.4 / 92.5 / 82.9 (pAcc / hIoU / S / U).
_base_ = ['../vit-b16_voc-15-5_inductive.py']
model = dict(decode_head=dict(recovery=None))
