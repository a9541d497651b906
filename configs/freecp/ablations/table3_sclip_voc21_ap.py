# Table 3: FreeCP + SCLIP on PASCAL VOC 21 with AP only.
_base_ = ['../sclip_voc21.py']
model = dict(decode_head=dict(purification='ap'))
