# Table 6: FreeCP + SCLIP on Cityscapes with ViT-L/14, OpenAI weights.
_base_ = ['../sclip_city.py']
model = dict(clip=dict(model_name='ViT-L-14', pretrained='openai'))
