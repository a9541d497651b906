# Timing reference for configs/freecp/gem_ade.py (docs/benchmarks.md):
# the same model, strategy, resolution and 384/112 windows with the
# baseline's cosine head instead of FreeCPHead.
_base_ = ['../gem_ade.py']
model = dict(
    decode_head=dict(
        _delete_=True, type='CosineSimilarityHead', logit_scale=40.0))
