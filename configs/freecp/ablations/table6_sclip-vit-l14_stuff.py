# Table 6: FreeCP + SCLIP on COCO-Stuff 171 with ViT-L/14, OpenAI weights.
_base_ = ['../sclip_stuff.py']
model = dict(clip=dict(model_name='ViT-L-14', pretrained='openai'))
