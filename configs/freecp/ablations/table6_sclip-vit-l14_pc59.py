# Table 6: FreeCP + SCLIP on PASCAL Context 59 with ViT-L/14, OpenAI weights (the table has
# no PC59 column; the row for every benchmark).
_base_ = ['../sclip_pc59.py']
model = dict(clip=dict(model_name='ViT-L-14', pretrained='openai'))
