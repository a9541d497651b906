# Fig. 1b "GT vocabulary": official SCLIP on Cityscapes
# (configs/baselines/sclip_city.py, the "full vocabulary" bar) with each image's
# vocabulary restricted to the classes of its annotation (the ground-truth
# oracle: analysis only, it reads the labels; the model warns). SCLIP at
# FreeCP's settings: ../baselines/sclip_city.py with
# --cfg-options model.gt_vocabulary=True.
_base_ = ['../../baselines/sclip_city.py']
model = dict(gt_vocabulary=True)
