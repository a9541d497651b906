# Table 3: FreeCP + SCLIP on COCO-Object with AP only.
_base_ = ['../sclip_object.py']
model = dict(decode_head=dict(purification='ap'))
