# Table 3: FreeCP + SCLIP on PASCAL Context 60 with RP only.
_base_ = ['../sclip_pc60.py']
model = dict(decode_head=dict(purification='rp'))
