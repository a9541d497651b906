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
    """A tiny random open_clip CLIP model, eval mode and frozen.

    Built by the package's loader (:func:`~mmseg_ovss.clip.loading.
    build_clip_model`); seeds torch's global RNG with ``seed`` first and
    draws the weights from it, so the RNG state afterwards is what the tests
    written against this helper expect.
    """
    import torch

    from mmseg_ovss.clip.loading import build_clip_model
    register_tiny_clip_models()
    torch.manual_seed(seed)
    return build_clip_model(name, pretrained=None, random_init=True,
                            seed=None)


#: A pretrained tag of the tiny models that, like OpenAI's weights, asks for
#: QuickGELU. It has no files: build from a local file or random weights.
TINY_QUICK_GELU_TAG = 'ovss_test_quickgelu'


def register_tiny_quick_gelu_tag() -> None:
    """Give the tiny models :data:`TINY_QUICK_GELU_TAG` (idempotent), so
    that tests can check the activation a tag's weights get without
    downloading them. Uses open_clip's pretrained table
    (``open_clip.pretrained._PRETRAINED``): it has no public registration.
    """
    from open_clip import pretrained
    register_tiny_clip_models()
    for name in TINY_CLIP_MODELS:
        tags = pretrained._PRETRAINED.setdefault(name, {})
        tags[TINY_QUICK_GELU_TAG] = dict(url='', hf_hub='', quick_gelu=True)


register_tiny_clip_models()
