# Table 6 "Baseline": SCLIP at FreeCP's settings on COCO-Stuff 171 with ViT-L/14 with OpenAI weights;
# everything else as ./sclip_stuff.py (FreeCP's SCLIP variant, cosine head,
# no prob_thd / area_thd / PAMR). FreeCP with this CLIP:
# ../ablations/table6_sclip-vit-l14_stuff.py.
_base_ = ['./sclip_stuff.py']
model = dict(clip=dict(model_name='ViT-L-14', pretrained='openai'))
