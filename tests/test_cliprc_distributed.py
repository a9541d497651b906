"""CLIP-RC under ``tools/dist_train.sh`` and ``--resume``, end to end.

- 2 gloo processes x 1 image train the weights of 1 process x 2 images
  (``total_batch_size = 2``), 3 iterations over an epoch boundary;
- a run that crashes after iteration 2 and is resumed ends with the
  weights of the uninterrupted run (AdamW: its moments and the iteration
  count travel through the checkpoint).

The configs are the shipped ``configs/cliprc/vit-b16_voc-15-5_inductive.py``
with the tiny random CLIP, 64 px fixed-size crops and, so that runs are
comparable, no randomness left in a step: dropout, attention dropout,
the prompts' dropout and drop path are 0 (every process draws its own
masks from its own generator, and mmengine's resume re-seeds rather than
restoring the generators, so a masked run cannot be matched), and the
pipeline has no random transforms. Data order and initial weights follow
``randomness.seed`` (mmseg_ovss/testing/training.py explains the sampler).
The NEL divides by the number of (image, class) masks averaged over the
processes (``average_across_processes``, ZegCLIP's criterion), so DDP's
gradient mean equals the one-process gradient.
"""
from pathlib import Path

import pytest
import torch

import mmseg_ovss.testing.hooks  # noqa: F401  (CrashAfterIterHook)
from mmseg_ovss.testing.cliprc import make_tiny_voc_aug
from mmseg_ovss.testing.tiny_datasets import exported_data_root
from mmseg_ovss.testing.training import (assert_same_weights, crash_and_resume,
                                         dist_train,
                                         final_state_dict, train_in_process,
                                         weight_tolerance)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / 'configs/cliprc/vit-b16_voc-15-5_inductive.py'
SIZE = 64
NUM_IMAGES = 4

DETERMINISTIC = f'''
_base_ = ['{SHIPPED.as_posix()}']
custom_imports = dict(imports=['mmseg_ovss', 'mmseg_ovss.testing.tiny_clip'],
                      allow_failed_imports=False)
crop = ({SIZE}, {SIZE})
model = dict(
    clip=dict(_delete_=True, model_name='ovss-tiny-ViT-16', pretrained=None,
              random_init=True),
    data_preprocessor=dict(size=crop),
    backbone=dict(drop_path_rate=0.0,
                  prompts=dict(num_tokens=2, dropout=0.0)),
    region_bridge=dict(num_tokens=4),
    decode_head=dict(in_channels=32, embed_dims=32,
                     decoder=dict(num_heads=4, dropout=0.0,
                                  attn_dropout=0.0),
                     recovery=dict(dropout=0.0, attn_dropout=0.0)),
    test_cfg=dict(_delete_=True, mode='whole'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadCheckedAnnotations'),
    dict(type='Resize', scale=crop, keep_ratio=False),
    dict(type='ZeroShotLabels', split={{{{_base_.zero_shot_split}}}},
         setting={{{{_base_.zero_shot_setting}}}}, ignore_index=255),
    dict(type='PackSegInputs'),
]
total_batch_size = 2
train_dataloader = dict(num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
train_cfg = dict(max_iters=ITERS, val_interval=1000)
val_dataloader = None
val_cfg = None
val_evaluator = None
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=1, save_last=True))
randomness = dict(seed=0)
'''

# SGD: an update linear in the gradient (Adam's g / sqrt(v) would magnify
# the rounding of near-zero gradient entries of the two summation orders);
# a constant learning rate large enough to move the weights each step.
SGD = '''
optim_wrapper = dict(optimizer=dict(
    _delete_=True, type='SGD', lr=0.002, momentum=0.9, weight_decay=1e-4))
param_scheduler = []
'''

# The shipped AdamW and parameter groups, at a constant learning rate
# (the shipped warm-up would start at 2e-11).
ADAMW = '''
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = []
'''


@pytest.fixture(scope='module')
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('cliprc_dist_voc')
    make_tiny_voc_aug(root, num_images=NUM_IMAGES, size=SIZE)
    with exported_data_root(root):
        yield root


def _config(tmp_path: Path, iters: int, optimizer: str,
            extra: str = '') -> Path:
    path = tmp_path / 'tiny_cliprc_deterministic.py'
    path.write_text(DETERMINISTIC.replace('ITERS', str(iters)) + optimizer +
                    extra)
    return path


def _checkpoint(path: Path) -> dict:
    from mmengine.runner.checkpoint import CheckpointLoader
    return CheckpointLoader.load_checkpoint(str(path),
                                            map_location='cpu')['state_dict']


def _largest_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) /
               max(float(a[k].abs().max()), 1e-30)
               for k in a if a[k].is_floating_point())


def _trained(state: dict) -> dict:
    """The weights that train (head, prompts, final norm): the frozen CLIP
    weights are equal in any two runs of one seed."""
    return {k: v for k, v in state.items()
            if k.startswith(('decode_head.', 'final_norm.')) or
            'prompts' in k}


def _split_key_biases(state: dict):
    """The key biases of the decoders' cross-attentions apart from the rest.

    Their gradient is zero in exact arithmetic (softmax over the keys is
    unchanged by ``q . b_k``, the same for every key of a query), so they
    hold only rounding noise, of no scale of their own to compare against;
    they are compared with the scale of their layer's key weights."""
    biases = {k: v for k, v in state.items() if k.endswith('.attn.k.bias')}
    return {k: v for k, v in state.items() if k not in biases}, biases


def test_two_processes_train_the_weights_of_one(voc_root, tmp_path):
    iters = 3
    config = _config(tmp_path, iters, SGD)
    single = tmp_path / 'single'
    runner = train_in_process(config, single)
    # no gradient buffers on the frozen CLIP weights after a step
    model = runner.model
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith('backbone.') for n in frozen)
    assert all(p.grad is None for p in model.parameters()
               if not p.requires_grad)
    log = dist_train(config, tmp_path / 'dist', nproc=2, timeout=600)
    assert 'Distributed training: True' in log
    assert 'train_dataloader.batch_size = 1 per process' in log
    one, two = final_state_dict(single), final_state_dict(tmp_path / 'dist')
    # the largest reductions: the loss and the decoder's weight gradients
    # over the 2 x 64 x 64 label pixels of an iteration
    size = 2 * SIZE * SIZE
    (one, one_biases), (two, two_biases) = map(_split_key_biases, (one, two))
    assert_same_weights(one, two, torch.float32, reduction_size=size,
                        steps=iters)
    tol = weight_tolerance(torch.float32, size, iters)
    assert one_biases.keys() == two_biases.keys() and one_biases
    for key, bias in one_biases.items():
        scale = float(one[key[:-len('bias')] + 'weight'].abs().max())
        assert float((bias - two_biases[key]).abs().max()) <= tol * scale
    # the last iteration moved the trained weights far beyond that tolerance
    before = _split_key_biases(_checkpoint(single / 'iter_2.pth'))[0]
    moved = _largest_difference(_trained(before), _trained(one))
    assert moved > 100 * weight_tolerance(torch.float32, size, iters), moved


def test_resume_after_crash_matches_uninterrupted_run(voc_root, tmp_path):
    config = _config(tmp_path, 4, ADAMW)
    reference = tmp_path / 'uninterrupted'
    train_in_process(config, reference)
    crashed = tmp_path / 'crashed'
    _, text = crash_and_resume(
        config, crashed, custom_hooks=[dict(type='DatasetVocabularyHook')])
    assert 'resumed epoch: 0, iter: 2' in text
    assert 'Iter(train) [3/4]' in text and 'Iter(train) [1/4]' not in text
    # same process, same operations: equal up to one rounding
    assert_same_weights(final_state_dict(reference),
                        final_state_dict(crashed), torch.float32,
                        reduction_size=1)
    moved = _largest_difference(_trained(_checkpoint(crashed / 'iter_3.pth')),
                                _trained(final_state_dict(crashed)))
    assert moved > 100 * weight_tolerance(torch.float32, 1), moved
