"""Shared pytest fixtures: repository paths and tiny generated datasets."""
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
