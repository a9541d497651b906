"""Shared pytest fixtures: repository paths, tiny generated datasets and a
tiny random CLIP."""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ('voc21', 'voc20', 'pc60', 'pc59', 'pc459', 'coco_object',
              'coco_stuff171', 'ade150', 'ade847', 'cityscapes')


def pytest_configure(config):
    # Guard rail: no test may reach a model hub.
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    # No text-embedding bank in ~/.cache: tests that use one give a folder.
    os.environ['OVSS_TEXT_BANK'] = 'off'


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope='session')
def tiny_data_root(tmp_path_factory) -> Path:
    """Every benchmark's tiny dataset under one root; exported as OVSS_DATA_ROOT."""
    from mmseg_ovss.testing.tiny_datasets import (exported_data_root,
                                                  make_tiny_dataset)
    root = tmp_path_factory.mktemp('ovss_data')
    for name in BENCHMARKS:
        make_tiny_dataset(name, root)
    with exported_data_root(root):
        yield root


@pytest.fixture(scope='module')
def tiny_towers():
    """The two towers of one seeded tiny random CLIP: an SCLIP dense
    backbone and a one-template text encoder, in eval mode."""
    from mmseg_ovss.models.backbones.open_clip_vit import OpenCLIPViT
    from mmseg_ovss.models.text_encoders.open_clip_text_encoder import \
        OpenCLIPTextEncoder
    from mmseg_ovss.testing.tiny_clip import register_tiny_clip_models
    register_tiny_clip_models()
    weights = dict(model_name='ovss-tiny-ViT-16', random_init=True, seed=0)
    backbone = OpenCLIPViT(dense_strategy='SCLIP', **weights).eval()
    text = OpenCLIPTextEncoder(templates='single', **weights).eval()
    return backbone, text
