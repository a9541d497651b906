# PnP-OVSS Table 6, "Layer Mean" 5: the mean of the GradCAM maps of all
# heads of cross-attention layer 5 (BLIP Flickr, COCO-Stuff 171, short
# side 336, full pipeline): 11.6 mIoU in the paper.
_base_ = ['../blip_stuff_336.py']
model = dict(cross_attention_layer=5, cross_attention_head='mean')
