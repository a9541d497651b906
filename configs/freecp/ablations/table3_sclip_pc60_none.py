# Table 3: FreeCP + SCLIP on PASCAL Context 60 with refinement only ("+ Refine").
_base_ = ['../sclip_pc60.py']
model = dict(decode_head=dict(purification='none'))
