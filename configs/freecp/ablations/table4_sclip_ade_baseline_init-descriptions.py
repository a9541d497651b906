# Table 4 "Baseline, Initial: Vicuna": SCLIP at FreeCP's settings on ADE20K-150
# (../baselines/sclip_ade.py) with one description query per class (the
# normalised mean of its raw sentences, data/descriptions/ade150.json)
# instead of the template queries. ("Baseline, Template" is
# ../baselines/sclip_ade.py itself.)
_base_ = ['../baselines/sclip_ade.py']
model = dict(
    decode_head=dict(
        queries='descriptions',
        descriptions='data/descriptions/ade150.json'))
