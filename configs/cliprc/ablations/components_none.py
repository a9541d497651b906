# CLIP-RC ablation on VOC 15/5 inductive (40k iterations), CLIP-RC
# Table 5 row 1 (no RLB, RAM, RDL = ZegCLIP): pAcc / hIoU / S / U = 94.6 / 84.3 / 91.9 / 77.8.
_base_ = ['../../zegclip/vit-b16_voc-15-5_inductive.py']
