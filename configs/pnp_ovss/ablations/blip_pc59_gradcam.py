# PnP-OVSS Table 5 row "+ GradCam" on PASCAL Context 59, short side 768
# (BLIP Flickr): 21.6 mIoU in the paper.
_base_ = ['../blip_pc59.py']
model = dict(salience_dropout=None, blur_sigma=None, crf=None)
