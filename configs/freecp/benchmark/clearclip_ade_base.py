# Timing reference for configs/freecp/clearclip_ade.py (docs/benchmarks.md):
# the same model, strategy, resolution and 384/112 windows with the
# baseline's cosine head instead of FreeCPHead.
_base_ = ['../clearclip_ade.py']
model = dict(
    decode_head=dict(
        _delete_=True, type='CosineSimilarityHead', logit_scale=50.0))
