"""The training-free configs predict what they predicted before issue 9.

``tests/data/reference_outputs/`` holds the labels and stored
``seg_logits`` of every pinned config (``configs/baselines/``,
``configs/freecp/``) on the tiny random CLIP and two synthetic images, as
recorded by ``tools/dev/record_reference_outputs.py`` with the code before
the segmentors were rebased on the new CLIP modules (the commit is in
``manifest.json``). Each config is recomputed here with the code of this
checkout (:func:`mmseg_ovss.testing.reference_outputs.reference_outputs`)
and compared: scores within :data:`SCORE_TOL`, labels equal wherever the
recorded decision is not within rounding of a tie.

The default run takes the 31 configs of :data:`DEFAULT_CONFIGS` (every
method, head, text source and background rule: 1.5 minutes on 2 idle
cores); ``OVSS_REFERENCE_CONFIGS=all`` (or comma-separated patterns) runs
all 140 recorded configs (about 8 minutes on 2 idle cores): run it once
after changing a segmentor, head or the CLIP modules.
"""
import fnmatch
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mmseg_ovss.testing import reference_outputs as ref
from mmseg_ovss.testing.direct import EPS32

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / 'tests' / 'data' / 'reference_outputs'
MANIFEST = json.loads((RECORD / 'manifest.json').read_text())

# ------------------------------------------------------------- tolerance
# The same formulas in another operation order (other kernels, batch
# sizes, CPUs: Intel AMX or AMD) round differently. A stored score depends
# on a chain of fp32 reductions; their lengths, on the tiny CLIP (6 blocks
# of width 64, MLP 256, patch 16; a text tower of 2 blocks of width 32 over
# 77 tokens; embeddings of 32), counted as in tests/test_clip_segmentor.py:
#: Tokens of the largest window: a whole 232 x 336 image padded to 240 x 336
#: (the 448, 384 and 336 windows), CLS included.
WINDOW_TOKENS = 1 + (240 // 16) * (336 // 16)
#: One block: its MLP (256) and width (64) products, the softmax and the
#: attention sum over the window's tokens.
BLOCK_TERMS = 4 * 64 + 64 + WINDOW_TOKENS
#: Patch embedding (3 x 16 x 16 products), 6 blocks, and the longest dense
#: path on top (GEM: self-self attention through the last 6 blocks, twice).
IMAGE_TERMS = 3 * 16 * 16 + 6 * BLOCK_TERMS + 2 * 6 * (64 + WINDOW_TOKENS)
#: Text: 2 blocks (4 x 32 MLP, 32 width, 77 tokens), the mean of the 80
#: templates and its normalisation.
TEXT_TERMS = 2 * (4 * 32 + 32 + 77) + 80 + 32
#: The cosine (32), the softmax over at most 171 queries (COCO-Stuff; no
#: pinned vocabulary has more), 4 overlapping windows, 2 bilinear resizes.
HEAD_TERMS = 32 + 171 + 4 + 2 * 4
#: FreeCP's affinity (3 normalisation rounds and the square of Eq. 2) and
#: propagation (Eq. 3) over the window's tokens; PAMR's 10 steps of 16
#: neighbours (NACLIP) are fewer.
REFINE_TERMS = 5 * WINDOW_TOKENS
#: Roundings a score's cosines go through (11525).
TERMS = IMAGE_TERMS + TEXT_TERMS + HEAD_TERMS + REFINE_TERMS
# Worst case, their relative error is TERMS * eps (1.4e-3); as independent
# roundings of mean zero it exceeds lambda * sqrt(TERMS) * u (u = eps / 2)
# with probability at most 2 exp(-lambda^2 / 2) (Higham and Mary, "A new
# approach to probabilistic rounding error analysis", SIAM J. Sci. Comput.
# 41(5), 2019, the bound gamma~_n(lambda)): lambda = 8.5 makes that 4e-16
# per score, below 1e-8 for all the compared scores together. The worst
# case would hide real changes: another position-embedding resize mode
# moves these cosines by 4e-4 to 1e-3.
LAMBDA = 8.5
COSINE_TOL = LAMBDA * TERMS ** 0.5 * EPS32 / 2
#: The largest temperature before a softmax over classes (65, SCLIP on
#: VOC21) scales the cosines' error; a softmax moves a probability by at
#: most half the largest change of its logits. Discrete decisions (SCLIP's
#: area rule, FreeCP's thresholds and crops) keep to it only while no
#: recorded value lies within rounding of their threshold.
MAX_TEMPERATURE = 65.0
SCORE_TOL = MAX_TEMPERATURE / 2 * COSINE_TOL

#: Configs the default run recomputes (``*`` within one path part): every
#: method on a vocabulary with a background class, prob_thd and area_thd
#: (VOC21) and on one without (Cityscapes), with the baseline heads (cosine,
#: GEM's) and FreeCP's, FreeCP's purification orders (Table 3), description
#: queries (Table 4) and benchmark head, and a large vocabulary (ADE-150).
DEFAULT_CONFIGS = (
    'baselines/*_voc21', 'baselines/*_city', 'baselines/sclip_ade',
    'freecp/*_voc21', 'freecp/*_city', 'freecp/sclip_ade',
    'freecp/ablations/table3_sclip_voc21_*',
    'freecp/ablations/table4_sclip_ade_init-descriptions_ap-descriptions',
    'freecp/benchmark/sclip_ade_base',
)


def _matches(config: str, pattern: str) -> bool:
    return (config.count('/') == pattern.count('/')
            and fnmatch.fnmatchcase(config, pattern))


def selected_configs():
    """The recorded configs of ``OVSS_REFERENCE_CONFIGS`` ('all' or
    comma-separated patterns), by default of :data:`DEFAULT_CONFIGS`."""
    chosen = os.environ.get('OVSS_REFERENCE_CONFIGS', '')
    if chosen == 'all':
        return sorted(MANIFEST['configs'])
    patterns = tuple(chosen.split(',')) if chosen else DEFAULT_CONFIGS
    return [c for c in sorted(MANIFEST['configs'])
            if any(_matches(c, p) for p in patterns)]


@pytest.fixture(scope='module')
def recorded():
    with np.load(RECORD / 'outputs.npz') as npz:
        yield {name: npz[name] for name in npz.files}


def _of(recorded, config):
    prefix = f'{config}/'
    return {k[len(prefix):]: v for k, v in recorded.items()
            if k.startswith(prefix)}


def test_every_config_is_recorded_or_left_out_with_a_reason():
    configs = {ref.config_id(p, REPO / 'configs')
               for group in ('baselines', 'freecp')
               for p in (REPO / 'configs' / group).rglob('*.py')}
    recorded, excluded = set(MANIFEST['configs']), set(MANIFEST['excluded'])
    assert not recorded & excluded
    assert configs == recorded | excluded, sorted(
        configs ^ (recorded | excluded))
    assert all(MANIFEST['excluded'].values())


def test_the_recording_used_these_settings(recorded):
    """The images, pixels and weights of the recording are the ones
    :func:`reference_outputs` uses now (else: record again, with the code
    the outputs are pinned to)."""
    settings = MANIFEST['settings']
    assert settings['tiny_clip'] == ref.TINY_CLIP_OPTIONS
    assert [[list(a), list(b)] for a, b in ref.IMAGE_SHAPES] == \
        settings['image_shapes']
    assert (settings['image_seed'], settings['pixel_seed'],
            settings['num_pixels'], settings['num_full_pixels']) == (
        ref.IMAGE_SEED, ref.PIXEL_SEED, ref.NUM_PIXELS, ref.NUM_FULL_PIXELS)
    meta = _of(recorded, '__meta__')
    assert np.array_equal(meta['pixels'], ref.sample_pixels())
    assert str(meta['commit']) == MANIFEST['commit']


def test_the_tolerance_leaves_decisions_to_compare(recorded):
    """The bound is far below the scores' spread: most recorded labels are
    decided by more than twice of it."""
    margins = [ours['top_scores'][..., 0] - ours['top_scores'][..., 1]
               for ours in (_of(recorded, c) for c in MANIFEST['configs'])]
    assert np.mean(np.concatenate([m.ravel() for m in margins]) >
                   2 * SCORE_TOL) > 0.5


@pytest.mark.parametrize('config', selected_configs())
def test_outputs_match_the_recording(config, recorded):
    before = _of(recorded, config)
    after = ref.reference_outputs(REPO / 'configs' / f'{config}.py')
    assert np.array_equal(after['pixels'], ref.sample_pixels())
    scores = after['scores']  # (images, pixels, classes)
    assert scores.shape[-1] == int(before['num_classes'])
    num_full = before['scores'].shape[1]
    np.testing.assert_allclose(scores[:, :num_full], before['scores'],
                               rtol=0, atol=SCORE_TOL)
    np.testing.assert_allclose(
        np.take_along_axis(scores, before['top_classes'].astype(np.int64),
                           axis=-1),
        before['top_scores'], rtol=0, atol=SCORE_TOL)
    # labels: the top class wins by more than both scores can move, and
    # (with prob_thd) its score is not within rounding of the threshold
    top = before['top_scores']
    decided = top[..., 0] - top[..., 1] > 2 * SCORE_TOL
    prob_thd = float(before['prob_thd'])
    if prob_thd > 0:
        decided &= np.abs(top[..., 0] - prob_thd) > SCORE_TOL
    np.testing.assert_array_equal(after['labels'][decided],
                                  before['labels'][decided])
