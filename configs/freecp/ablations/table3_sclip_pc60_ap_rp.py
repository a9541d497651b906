# Table 3: FreeCP + SCLIP on PASCAL Context 60 with AP then RP.
_base_ = ['../sclip_pc60.py']
model = dict(decode_head=dict(purification='ap_rp'))
