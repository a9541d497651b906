# Table 1 "Refine w/ GT": FreeCP + SCLIP on COCO-Stuff 171 with refinement only
# (./table3_sclip_stuff_none.py, which is also the "Refine w/o GT" row) and each
# image's vocabulary restricted to the classes of its annotation (the
# ground-truth oracle: analysis only, it reads the labels; the model warns).
# "Baseline" row: ../baselines/sclip_stuff.py.
_base_ = ['./table3_sclip_stuff_none.py']
model = dict(gt_vocabulary=True)
