# Table 6: FreeCP + SCLIP on Cityscapes with OpenCLIP ViT-B/16 (LAION-2B).
_base_ = ['../sclip_city.py']
model = dict(clip=dict(model_name='ViT-B-16', pretrained='laion2b_s34b_b88k'))
