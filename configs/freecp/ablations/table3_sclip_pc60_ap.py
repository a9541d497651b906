# Table 3: FreeCP + SCLIP on PASCAL Context 60 with AP only.
_base_ = ['../sclip_pc60.py']
model = dict(decode_head=dict(purification='ap'))
