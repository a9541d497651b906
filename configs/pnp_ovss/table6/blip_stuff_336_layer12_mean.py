# PnP-OVSS Table 6, "Layer Mean" 12: the mean of the GradCAM maps of all
# heads of cross-attention layer 12 (BLIP Flickr, COCO-Stuff 171, short
# side 336, full pipeline): 5.8 mIoU in the paper.
_base_ = ['../blip_stuff_336.py']
model = dict(cross_attention_layer=12, cross_attention_head='mean')
