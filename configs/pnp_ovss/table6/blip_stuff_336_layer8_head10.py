# PnP-OVSS Table 6, "Head in Layer 8" 10: cross-attention layer 8, head 10
# (BLIP Flickr, COCO-Stuff 171, short side 336, full pipeline):
# 29.6 mIoU in the paper (head 10 is the searched setting, Table 2).
_base_ = ['../blip_stuff_336.py']
model = dict(cross_attention_layer=8, cross_attention_head=10)
