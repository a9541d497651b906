# Table 3: FreeCP + SCLIP on ADE20K-150 with AP then RP.
_base_ = ['../sclip_ade.py']
model = dict(decode_head=dict(purification='ap_rp'))
