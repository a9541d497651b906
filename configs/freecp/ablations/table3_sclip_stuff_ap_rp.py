# Table 3: FreeCP + SCLIP on COCO-Stuff 171 with AP then RP.
_base_ = ['../sclip_stuff.py']
model = dict(decode_head=dict(purification='ap_rp'))
