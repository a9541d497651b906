# Fig. 1b "GT vocabulary": official SCLIP on COCO-Stuff 171
# (configs/baselines/sclip_stuff.py, the "full vocabulary" bar) with each image's
# vocabulary restricted to the classes of its annotation (the ground-truth
# oracle: analysis only, it reads the labels; the model warns). SCLIP at
# FreeCP's settings: ../baselines/sclip_stuff.py with
# --cfg-options model.gt_vocabulary=True.
_base_ = ['../../baselines/sclip_stuff.py']
model = dict(gt_vocabulary=True)
