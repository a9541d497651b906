"""DCP-CLIP training is the same on 1 and 2 processes, and resumable.

The shipped training config (``configs/dcpclip/vit-b16_coco-stuff171_80k.py``)
at tiny size (``write_tiny_config``: tiny random CLIP, 3 templates, 64 px,
fixed resize so both runs load the same pixels) with two changes that make
the comparison exact up to rounding:

- SGD instead of AdamW (Adam's ``g / sqrt(v)`` magnifies the rounding of
  near-zero gradient entries into full-size steps); the parameter groups
  (CLIP x 0.01) and the gradient clipping stay;
- a constant learning rate, so each step moves the weights.

Dynamic category selection makes the graph data-dependent: each image
selects its own number K of classes. Two things keep DDP correct without
``find_unused_parameters``: every learnable parameter is on the path of
every image's loss whatever K is (the cost volume, alignment and decoder
run on the K packed classes with shared weights; the aggregator guidance
projections, unused without an aggregator, are not built), and the loss is
the mean of per-image means (``loss_normalization='image'``), which is the
same for any split of the total batch over processes.
"""
from pathlib import Path

import pytest
import torch

import mmseg_ovss.testing.hooks  # noqa: F401  (CrashAfterIterHook)
from mmseg_ovss.testing.cost_volume_configs import TINY_CROP, write_tiny_config
from mmseg_ovss.testing.tiny_datasets import (exported_data_root,
                                              make_tiny_dataset)
from mmseg_ovss.testing.training import (assert_same_weights, crash_and_resume,
                                         dist_train,
                                         final_state_dict, train_in_process,
                                         weight_tolerance)

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / 'configs/dcpclip/vit-b16_coco-stuff171_80k.py'
NUM_IMAGES = 4
ITERS = 3

_EXACT = """
optim_wrapper = dict(optimizer=dict(
    _delete_=True, type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-4))
param_scheduler = []
"""


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('dcp_dist_data')
    make_tiny_dataset('coco_stuff171', root, num_images=NUM_IMAGES,
                      image_size=(64, 64))
    with exported_data_root(root):
        yield root


def _config(tmp_path: Path, iters: int, extra: str = '') -> Path:
    return write_tiny_config(TRAIN, tmp_path / 'tiny_dcp.py', iters=iters,
                             batch=2, checkpoint_interval=1,
                             deterministic=True, extra=_EXACT + extra)


def _relative_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) /
               max(float(a[k].abs().max()), 1e-30)
               for k in a if a[k].is_floating_point())


def test_two_processes_train_the_weights_of_one(data_root, tmp_path):
    """Total batch 2: 2 gloo processes x 1 image = 1 process x 2 images,
    3 iterations (across the 4-image epoch boundary)."""
    config = _config(tmp_path, ITERS)
    single = tmp_path / 'single'
    train_in_process(config, single)
    log = dist_train(config, tmp_path / 'dist', nproc=2)
    assert 'Distributed training: True' in log
    assert 'train_dataloader.batch_size = 1 per process' in log
    one = final_state_dict(single)
    two = final_state_dict(tmp_path / 'dist')
    # the largest reductions: the loss over 2 images x 64 x 64 pixels x
    # the selected classes (at most the 171 of the vocabulary)
    size = 2 * TINY_CROP * TINY_CROP * 171
    worst = assert_same_weights(one, two, torch.float32,
                                reduction_size=size, steps=ITERS)
    # the runs did train: one step moves the weights far beyond that
    first = final_state_dict(single)
    from mmengine.runner.checkpoint import CheckpointLoader
    start = CheckpointLoader.load_checkpoint(
        str(single / 'iter_1.pth'), map_location='cpu')['state_dict']
    moved = _relative_difference(start, first)
    tol = weight_tolerance(torch.float32, size, ITERS)
    assert moved > 10 * tol, (moved, tol, worst)


def test_resume_after_crash_matches_uninterrupted_run(data_root, tmp_path):
    """Crash after iteration 2 of 3, ``--resume``: the final weights are
    the uninterrupted run's (the same process and operations: exact up to
    the rounding of one step's reductions)."""
    config = _config(tmp_path, 3)
    reference = tmp_path / 'uninterrupted'
    train_in_process(config, reference)
    crashed = tmp_path / 'crashed'
    _, text = crash_and_resume(
        config, crashed, custom_hooks=[dict(type='DatasetVocabularyHook')])
    assert 'resumed epoch: 0, iter: 2' in text
    size = 2 * TINY_CROP * TINY_CROP * 171
    assert_same_weights(final_state_dict(reference),
                        final_state_dict(crashed), torch.float32,
                        reduction_size=size, steps=1)
