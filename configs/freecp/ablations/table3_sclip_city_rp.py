# Table 3: FreeCP + SCLIP on Cityscapes with RP only.
_base_ = ['../sclip_city.py']
model = dict(decode_head=dict(purification='rp'))
