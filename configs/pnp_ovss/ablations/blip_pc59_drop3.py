# PnP-OVSS Table 5 row "+ Drop 3" on PASCAL Context 59, short side 768
# (BLIP Flickr): 27.0 mIoU in the paper.
# "+ Drop n" = n Salience DropOut rounds after the first GradCAM
# pass, i.e. n + 1 passes (docs/pnp_ovss.md, "Table 5 rows").
# The passes reading: --cfg-options model.salience_dropout.iterations=n
_base_ = ['../blip_pc59.py']
dropout_rounds = 3
model = dict(
    salience_dropout=dict(iterations=dropout_rounds + 1),
    blur_sigma=None,
    crf=None)
