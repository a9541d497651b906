# Table 1 "Refine w/ GT": FreeCP + SCLIP on PASCAL Context 60 with refinement only
# (./table3_sclip_pc60_none.py, which is also the "Refine w/o GT" row) and each
# image's vocabulary restricted to the classes of its annotation (the
# ground-truth oracle: analysis only, it reads the labels; the model warns).
# "Baseline" row: ../baselines/sclip_pc60.py.
_base_ = ['./table3_sclip_pc60_none.py']
model = dict(gt_vocabulary=True)
