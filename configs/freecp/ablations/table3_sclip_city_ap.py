# Table 3: FreeCP + SCLIP on Cityscapes with AP only.
_base_ = ['../sclip_city.py']
model = dict(decode_head=dict(purification='ap'))
