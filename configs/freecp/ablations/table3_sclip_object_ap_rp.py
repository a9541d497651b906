# Table 3: FreeCP + SCLIP on COCO-Object with AP then RP.
_base_ = ['../sclip_object.py']
model = dict(decode_head=dict(purification='ap_rp'))
