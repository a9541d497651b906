# Fig. 1b "GT vocabulary": official SCLIP on ADE20K-150
# (configs/baselines/sclip_ade.py, the "full vocabulary" bar) with each image's
# vocabulary restricted to the classes of its annotation (the ground-truth
# oracle: analysis only, it reads the labels; the model warns). SCLIP at
# FreeCP's settings: ../baselines/sclip_ade.py with
# --cfg-options model.gt_vocabulary=True.
_base_ = ['../../baselines/sclip_ade.py']
model = dict(gt_vocabulary=True)
