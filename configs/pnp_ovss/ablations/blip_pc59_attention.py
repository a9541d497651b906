# PnP-OVSS Table 5 row "BLIP Flickr (cross-attention only)" on PASCAL Context 59, short side 768
# (BLIP Flickr): 19.8 mIoU in the paper.
_base_ = ['../blip_pc59.py']
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
