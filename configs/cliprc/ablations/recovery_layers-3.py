# CLIP-RC ablation on VOC 15/5 inductive (40k iterations), CLIP-RC
# Table 8: recovery loss L1, 3 layer(s): hIoU 87.0
# (L1, 1 layer: 88.4, the main config).
_base_ = ['../vit-b16_voc-15-5_inductive.py']
model = dict(decode_head=dict(recovery=dict(loss='l1', num_layers=3)))
