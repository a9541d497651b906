# PnP-OVSS Table 5 row "+ Drop 4 + Blur + Dense CRF" on COCO-Stuff 171, short side 768
# (BLIP Flickr): 32.5 mIoU in the paper.
# "+ Drop n" = n Salience DropOut rounds after the first GradCAM
# pass, i.e. n + 1 passes (docs/pnp_ovss.md, "Table 5 rows").
# The passes reading: --cfg-options model.salience_dropout.iterations=n
_base_ = ['../blip_stuff.py']
dropout_rounds = 4
# the full pipeline with 5 passes; ../blip_stuff.py (Eqs. 2-3: 4 passes)
# is the main result the paper reports with the same number
model = dict(salience_dropout=dict(iterations=dropout_rounds + 1))
