# Table 6 "Baseline": SCLIP at FreeCP's settings on PASCAL Context 59 with OpenCLIP ViT-B/16 (LAION-2B laion2b_s34b_b88k);
# everything else as ./sclip_pc59.py (FreeCP's SCLIP variant, cosine head,
# no prob_thd / area_thd / PAMR). FreeCP with this CLIP:
# ../ablations/table6_sclip-openclip-b16_pc59.py.
_base_ = ['./sclip_pc59.py']
model = dict(clip=dict(model_name='ViT-B-16', pretrained='laion2b_s34b_b88k'))
