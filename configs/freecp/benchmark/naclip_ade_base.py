# Timing reference for configs/freecp/naclip_ade.py (docs/benchmarks.md):
# the same model, strategy, resolution and 384/112 windows with the
# baseline's cosine head instead of FreeCPHead (PAMR off in both, as the
# FreeCP config; FreeCP paper Sec. 4.2, chenqi1126/FreeCP configs/cfg_ade20k.py).
_base_ = ['../naclip_ade.py']
model = dict(
    decode_head=dict(
        _delete_=True, type='CosineSimilarityHead', logit_scale=40.0))
