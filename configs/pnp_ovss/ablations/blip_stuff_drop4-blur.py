# PnP-OVSS Table 5 row "+ Drop 4 + Blur" on COCO-Stuff 171, short side 768
# (BLIP Flickr): 28.6 mIoU in the paper.
# "+ Drop n" = n Salience DropOut rounds after the first GradCAM
# pass, i.e. n + 1 passes (docs/pnp_ovss.md, "Table 5 rows").
# The passes reading: --cfg-options model.salience_dropout.iterations=n
_base_ = ['../blip_stuff.py']
dropout_rounds = 4
model = dict(
    salience_dropout=dict(iterations=dropout_rounds + 1), crf=None)
