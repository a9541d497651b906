# Table 6: FreeCP + SCLIP on PASCAL VOC 20 with OpenCLIP ViT-B/16 (LAION-2B) (the table has
# no VOC20 column; the row for every benchmark).
_base_ = ['../sclip_voc20.py']
model = dict(clip=dict(model_name='ViT-B-16', pretrained='laion2b_s34b_b88k'))
