# PnP-OVSS Table 5 row "BLIP Flickr (cross-attention only)" on COCO-Stuff 171, short side 768
# (BLIP Flickr): 14.5 mIoU in the paper.
_base_ = ['../blip_stuff.py']
# §3: the raw cross-attention maps, "normalized by softmax along the
# first dimension K": no GradCAM, no threshold, no background channel.
model = dict(
    use_gradcam=False,
    salience_dropout=None,
    normalization='softmax',
    threshold=None,
    background=False,
    blur_sigma=None,
    crf=None)
