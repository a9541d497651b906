# Table 3: FreeCP + SCLIP on Cityscapes with refinement only ("+ Refine").
_base_ = ['../sclip_city.py']
model = dict(decode_head=dict(purification='none'))
