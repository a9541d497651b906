# Table 1 "Refine w/ GT": FreeCP + SCLIP on COCO-Object with refinement only
# (./table3_sclip_object_none.py, which is also the "Refine w/o GT" row) and each
# image's vocabulary restricted to the classes of its annotation (the
# ground-truth oracle: analysis only, it reads the labels; the model warns).
# "Baseline" row: ../baselines/sclip_object.py.
_base_ = ['./table3_sclip_object_none.py']
model = dict(gt_vocabulary=True)
