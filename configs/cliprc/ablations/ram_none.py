# CLIP-RC ablation on VOC 15/5 inductive (40k iterations), CLIP-RC
# Table 7: RAM inputs CLS=False, RLB=False: hIoU 85.6 (both: 88.4, the main config).
_base_ = ['../vit-b16_voc-15-5_inductive.py']
model = dict(decode_head=dict(region_alignment=dict(use_cls=False, use_rlb=False)))
