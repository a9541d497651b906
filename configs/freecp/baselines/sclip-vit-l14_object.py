# Table 6 "Baseline": SCLIP at FreeCP's settings on COCO-Object with ViT-L/14 with OpenAI weights;
# everything else as ./sclip_object.py (FreeCP's SCLIP variant, cosine head,
# no prob_thd / area_thd / PAMR). FreeCP with this CLIP:
# ../ablations/table6_sclip-vit-l14_object.py.
_base_ = ['./sclip_object.py']
model = dict(clip=dict(model_name='ViT-L-14', pretrained='openai'))
