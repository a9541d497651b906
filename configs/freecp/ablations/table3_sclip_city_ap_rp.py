# Table 3: FreeCP + SCLIP on Cityscapes with AP then RP.
_base_ = ['../sclip_city.py']
model = dict(decode_head=dict(purification='ap_rp'))
