# CLIP-RC ablation on VOC 15/5 inductive (40k iterations), CLIP-RC
# Table 8: recovery loss KD, 1 layer(s): hIoU 86.4
# (L1, 1 layer: 88.4, the main config).
_base_ = ['../vit-b16_voc-15-5_inductive.py']
model = dict(decode_head=dict(recovery=dict(loss='kd', num_layers=1)))
