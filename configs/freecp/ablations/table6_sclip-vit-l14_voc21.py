# Table 6: FreeCP + SCLIP on PASCAL VOC 21 with ViT-L/14, OpenAI weights.
_base_ = ['../sclip_voc21.py']
model = dict(clip=dict(model_name='ViT-L-14', pretrained='openai'))
