# Table 3: FreeCP + SCLIP on COCO-Stuff 171 with AP only.
_base_ = ['../sclip_stuff.py']
model = dict(decode_head=dict(purification='ap'))
