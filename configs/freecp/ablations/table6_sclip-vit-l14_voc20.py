# Table 6: FreeCP + SCLIP on PASCAL VOC 20 with ViT-L/14, OpenAI weights (the table has
# no VOC20 column; the row for every benchmark).
_base_ = ['../sclip_voc20.py']
model = dict(clip=dict(model_name='ViT-L-14', pretrained='openai'))
