# CLIP-RC ablation on VOC 15/5 inductive (40k iterations), CLIP-RC
# Table 5 row 2 (+RLB): 95.2 / 85.4 / 91.5 / 80.0 (pAcc / hIoU / S / U);
# regional descriptors and the bidirectional decoder, no RAM, no recovery.
_base_ = ['../vit-b16_voc-15-5_inductive.py']
model = dict(decode_head=dict(region_alignment=None, recovery=None))
