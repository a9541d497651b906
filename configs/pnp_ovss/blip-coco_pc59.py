# PnP-OVSS + BLIP COCO (BLIP ITM large, COCO retrieval weights) on
# PASCAL Context 59, short side 768. Paper Table 3 (BLIP COCO, 768): 41.9 mIoU.
# The paper gives no separate search for BLIP COCO: the BLIP Flickr
# setting (layer 8, head 10, threshold 0.15, sigma 0.05) is kept.
_base_ = ['./blip_pc59.py']
model = dict(blip=dict(pretrained='large-coco'))
