# PnP-OVSS (Luo et al., CVPR 2024) over BridgeTower large ITM (§4, Tables
# 2-3): the BLIP pipeline (pnp_blip.py) with BridgeTower's cross-modal text
# layers instead of BLIP's text encoder. Table 2's search result: layer 2,
# head 8 (1-based; search space layers 1-6, heads 1-16), threshold 0.15,
# blur sigma 0.05. BridgeTower's images are normalised with the OpenAI CLIP
# statistics, as BLIP's (pnp_blip.py's data_preprocessor).
# Weights: a HuggingFace id, an alias ('large-itm' default, 'base-itm') or
# a local folder (model.bridgetower.pretrained).
_base_ = ['./pnp_blip.py']
model = dict(
    blip=None,
    bridgetower=dict(pretrained='large-itm'),
    cross_attention_layer=2,
    cross_attention_head=8)
