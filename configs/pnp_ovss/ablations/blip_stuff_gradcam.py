# PnP-OVSS Table 5 row "+ GradCam" on COCO-Stuff 171, short side 768
# (BLIP Flickr): 17.5 mIoU in the paper.
_base_ = ['../blip_stuff.py']
model = dict(salience_dropout=None, blur_sigma=None, crf=None)
