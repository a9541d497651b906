# Table 6 "Baseline": SCLIP at FreeCP's settings on PASCAL VOC 20 with ViT-L/14 with OpenAI weights;
# everything else as ./sclip_voc20.py (FreeCP's SCLIP variant, cosine head,
# no prob_thd / area_thd / PAMR). FreeCP with this CLIP:
# ../ablations/table6_sclip-vit-l14_voc20.py.
_base_ = ['./sclip_voc20.py']
model = dict(clip=dict(model_name='ViT-L-14', pretrained='openai'))
