# Table 6: FreeCP + SCLIP on ADE20K-150 with ViT-L/14, OpenAI weights.
_base_ = ['../sclip_ade.py']
model = dict(clip=dict(model_name='ViT-L-14', pretrained='openai'))
