# Table 6: FreeCP + SCLIP on COCO-Object with ViT-L/14, OpenAI weights.
_base_ = ['../sclip_object.py']
model = dict(clip=dict(model_name='ViT-L-14', pretrained='openai'))
