# Fig. 1b "GT vocabulary": official SCLIP on COCO-Object
# (configs/baselines/sclip_object.py, the "full vocabulary" bar) with each image's
# vocabulary restricted to the classes of its annotation (the ground-truth
# oracle: analysis only, it reads the labels; the model warns). SCLIP at
# FreeCP's settings: ../baselines/sclip_object.py with
# --cfg-options model.gt_vocabulary=True.
_base_ = ['../../baselines/sclip_object.py']
model = dict(gt_vocabulary=True)
