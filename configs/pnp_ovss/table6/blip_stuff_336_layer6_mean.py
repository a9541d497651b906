# PnP-OVSS Table 6, "Layer Mean" 6: the mean of the GradCAM maps of all
# heads of cross-attention layer 6 (BLIP Flickr, COCO-Stuff 171, short
# side 336, full pipeline): 12.9 mIoU in the paper.
_base_ = ['../blip_stuff_336.py']
model = dict(cross_attention_layer=6, cross_attention_head='mean')
