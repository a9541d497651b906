# Table 3: FreeCP + SCLIP on ADE20K-150 with RP only.
_base_ = ['../sclip_ade.py']
model = dict(decode_head=dict(purification='rp'))
