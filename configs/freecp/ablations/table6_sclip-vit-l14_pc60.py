# Table 6: FreeCP + SCLIP on PASCAL Context 60 with ViT-L/14, OpenAI weights.
_base_ = ['../sclip_pc60.py']
model = dict(clip=dict(model_name='ViT-L-14', pretrained='openai'))
