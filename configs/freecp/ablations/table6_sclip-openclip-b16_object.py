# Table 6: FreeCP + SCLIP on COCO-Object with OpenCLIP ViT-B/16 (LAION-2B).
_base_ = ['../sclip_object.py']
model = dict(clip=dict(model_name='ViT-B-16', pretrained='laion2b_s34b_b88k'))
