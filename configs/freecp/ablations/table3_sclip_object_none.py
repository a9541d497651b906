# Table 3: FreeCP + SCLIP on COCO-Object with refinement only ("+ Refine").
_base_ = ['../sclip_object.py']
model = dict(decode_head=dict(purification='none'))
