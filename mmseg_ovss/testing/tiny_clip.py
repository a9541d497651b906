"""Tiny open_clip architectures for tests, ``--random-init`` and benchmarks.

Importing this module registers them with open_clip's model-config mechanism
(``open_clip.add_model_config``), so they are valid ``model_name`` values
anywhere an architecture name is accepted (``clip=dict(model_name=...)``):

* ``ovss-tiny-ViT-16``: ViT with 6 blocks, width 64, 4 heads, patch 16
  (enough blocks for GEM's 6-block path), 2-layer text tower;
* ``ovss-tiny-ViT-8``: 2 blocks, width 32, patch 8.

Both use the real CLIP BPE tokenizer (vocabulary 49408) with random weights.
"""
from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).resolve().parent / 'open_clip_configs'
TINY_CLIP_MODELS = ('ovss-tiny-ViT-16', 'ovss-tiny-ViT-8')


def register_tiny_clip_models() -> None:
    """Add the tiny configs to open_clip's registry (idempotent)."""
    if not all(name in open_clip.list_models() for name in TINY_CLIP_MODELS):
        open_clip.add_model_config(CONFIG_DIR)


def build_tiny_clip(name: str = 'ovss-tiny-ViT-16', seed: int = 0):
    """A tiny random open_clip CLIP model in eval mode."""
    import torch
    register_tiny_clip_models()
    torch.manual_seed(seed)
    return open_clip.create_model(name, pretrained=None).eval()


register_tiny_clip_models()
