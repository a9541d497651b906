# PnP-OVSS Table 4 (unseen classes): BLIP Flickr on PASCAL Context 59, short side 768,
# the paper's 53.8 mIoU. Training-free: the caption holds every class and
# ZeroShotIoUMetric reports mIoU_unseen over the unseen classes of
# data/splits/pc59_49_10.json (assumed split: the paper does not list it; the file is the
# SPNet / ZS3Net split its Table 4 baselines use, see docs/pnp_ovss.md).
_base_ = ['../blip_pc59.py']
test_evaluator = dict(type='ZeroShotIoUMetric', split='data/splits/pc59_49_10.json')
val_evaluator = test_evaluator
