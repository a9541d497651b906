"""End-to-end runs of the shipped DCP-CLIP configs at tiny size.

``tools/train.py`` on a generated COCO-Stuff 171 layout lowers the loss;
``tools/test.py`` evaluates the trained checkpoint with the ADE-150 and
ADE-847 evaluation configs (tiny generated layouts, CAT-Seg's window +
whole-image ensemble at tiny size). The configs are the REAL shipped ones
with only sizes, weights and iterations overridden
(``mmseg_ovss.testing.cost_volume_configs.write_tiny_config``).
"""
import math
from pathlib import Path

import pytest

from mmseg_ovss.testing.cost_volume_configs import (TINY_ENSEMBLE_OPTIONS,
                                                    write_tiny_config)
from mmseg_ovss.testing.tiny_datasets import (exported_data_root,
                                              make_tiny_dataset)
from mmseg_ovss.testing.tools import run_tool

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / 'configs/dcpclip/vit-b16_coco-stuff171_80k.py'
ITERS = 4


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """4 iterations of the DCP-CLIP ViT-B/16 training config (tiny CLIP, one
    64 px image repeated, fixed resize so the loss can only fall by
    learning; lr raised to 1e-3 so 4 steps move the weights)."""
    root = tmp_path_factory.mktemp('dcp_train')
    data = root / 'data'
    make_tiny_dataset('coco_stuff171', data, num_images=1,
                      image_size=(64, 64))
    make_tiny_dataset('ade150', data, num_images=1, image_size=(48, 64))
    make_tiny_dataset('ade847', data, num_images=1, image_size=(48, 64))
    cfg = write_tiny_config(
        TRAIN, root / 'tiny_train.py', iters=ITERS, batch=2,
        deterministic=True,
        extra="optim_wrapper = dict(optimizer=dict(lr=1e-3))\n")
    work_dir = root / 'work'
    with exported_data_root(data):
        runner = run_tool('train', [cfg, '--work-dir', work_dir])
    return root, data, work_dir, runner


def test_training_lowers_the_loss(trained):
    _, _, work_dir, runner = trained
    history = runner.message_hub.get_scalar('train/loss').data[0]
    losses = [float(v) for v in history]
    assert len(losses) == ITERS
    assert all(math.isfinite(v) for v in losses)
    first, last = losses[0], losses[-1]
    assert last < first, losses
    assert (work_dir / f'iter_{ITERS}.pth').is_file()


@pytest.mark.parametrize('bench', ['ade150', 'ade847'])
def test_evaluation_config_on_the_checkpoint(trained, bench):
    """The evaluation config (Tag Validation with the benchmark's name map)
    scores the trained checkpoint: metrics exist and are in range."""
    root, data, work_dir, _ = trained
    cfg = write_tiny_config(
        REPO_ROOT / f'configs/dcpclip/vit-b16_coco-stuff171_80k_{bench}.py',
        root / f'tiny_{bench}.py')
    options = [f'{k}={v}'.replace(' ', '') for k, v in
               TINY_ENSEMBLE_OPTIONS.items()]
    with exported_data_root(data):
        metrics = run_tool('test', [
            cfg, work_dir / f'iter_{ITERS}.pth', '--work-dir',
            root / f'test_{bench}', '--cfg-options', *options])
    assert metrics is not None
    miou = [v for k, v in metrics.items() if k.endswith('mIoU')]
    assert miou and all(0.0 <= v <= 100.0 for v in miou), metrics
