# Table 3: FreeCP + SCLIP on COCO-Stuff 171 with RP only.
_base_ = ['../sclip_stuff.py']
model = dict(decode_head=dict(purification='rp'))
