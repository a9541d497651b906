"""PnP-OVSS pure steps: Salience DropOut schedules, post-processing, CRF."""
import sys

import numpy as np
import pytest
import torch

from mmseg_ovss.blip.postprocess import (add_background, gaussian_blur,
                                         minmax_per_class, threshold_maps)
from mmseg_ovss.blip.salience_dropout import (median_drop, salience_dropout,
                                              top_k_drop)
from mmseg_ovss.utils import crf as crf_module
from mmseg_ovss.utils.errors import OVSSConfigError


def _fixed_maps(num_images=2, num_classes=3, num_patches=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(num_images, num_classes, num_patches, generator=gen)


def test_median_schedule_drops_expected_patches():
    maps = _fixed_maps()
    calls = []

    def compute(keep):
        calls.append(keep.clone())
        return maps

    total, keeps = salience_dropout(compute, torch.ones(2, 16, dtype=bool),
                                    'median', iterations=4)
    # Direct computation of Eqs. 2-3 with numpy.
    m = maps.numpy()
    keep = np.ones((2, 16), bool)
    expected_total = np.zeros_like(m)
    for t in range(4):
        np.testing.assert_array_equal(keeps[t].numpy(), keep)
        masked = m * keep[:, None]
        expected_total += masked
        salience = masked.sum(1)
        for b in range(2):
            eta = np.median(salience[b][keep[b]])
            keep[b] = keep[b] & ~(salience[b] >= eta)
    # fp32 sums of at most 4 maps of values in [0, 1): 4 roundings of eps
    np.testing.assert_allclose(total.numpy(), expected_total,
                               rtol=4 * np.finfo(np.float32).eps, atol=0)
    # distinct values: exactly half of the remaining patches go each time
    assert [int(k[0].sum()) for k in keeps] == [16, 8, 4, 2]
    assert len(calls) == 4
    # dropped patches carry no salience in later passes
    assert (total[~keeps[1][:, None].expand_as(total)] ==
            maps[~keeps[1][:, None].expand_as(maps)]).all()


def test_median_drop_even_count_takes_mean_of_middle_values():
    salience = torch.tensor([[1., 2., 3., 4.]])
    keep = torch.ones(1, 4, dtype=bool)
    assert median_drop(salience, keep).tolist() == [[True, True, False, False]]
    # already-dropped patches are outside the median and stay dropped
    keep = torch.tensor([[True, True, True, False]])
    assert median_drop(salience, keep).tolist() == \
        [[True, False, False, False]]


def test_median_drop_with_tied_zeros_drops_half():
    """GradCAM clamps negatives: most patches tie at 0 and so does the
    median. Half of the remaining patches go (the highest first), never all
    of them."""
    salience = torch.tensor([[0., 0., 0., 0., 0., 0., 3., 5.],
                             [0., 0., 0., 0., 0., 0., 0., 0.]])
    keep = torch.ones(2, 8, dtype=bool)
    after = median_drop(salience, keep)
    assert after.sum(1).tolist() == [4, 4]
    # the salient patches go first; ties are broken by patch index
    assert after[0].tolist() == [False, False, True, True,
                                 True, True, False, False]
    assert after[1].tolist() == [False] * 4 + [True] * 4
    # odd counts: ceil(n / 2) go; already-dropped patches stay dropped
    keep = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    after = median_drop(salience, keep)
    assert after.sum(1).tolist() == [2, 4]
    assert not (after & ~keep).any()
    # over the full schedule some patches always remain
    maps = torch.zeros(1, 2, 16)
    maps[0, 0, :3] = torch.tensor([1., 2., 3.])
    _, keeps = salience_dropout(lambda k: maps, torch.ones(1, 16, dtype=bool),
                                'median', iterations=4)
    assert [int(k.sum()) for k in keeps] == [16, 8, 4, 2]


def test_top_k_schedule_matches_authors_code():
    maps = _fixed_maps(num_patches=36)
    total, keeps = salience_dropout(lambda keep: maps,
                                    torch.ones(2, 36, dtype=bool), 'top_k',
                                    iterations=3, top_k=10)
    assert [int(k[0].sum()) for k in keeps] == [36, 26, 16]
    salience = maps.sum(1)
    first_drop = salience.topk(10, dim=1).indices
    for b in range(2):
        assert not keeps[1][b, first_drop[b]].any()
    # the first map counts twice
    expected = 2 * maps + maps * keeps[1][:, None] + maps * keeps[2][:, None]
    # fp32 sums of 3 terms in [0, 2): 3 roundings of eps times the magnitude
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(total, expected, rtol=3 * eps, atol=0)
    assert top_k_drop(salience, keeps[2], 100).sum() == 0


def test_unknown_schedule_is_rejected():
    with pytest.raises(OVSSConfigError, match='schedule'):
        salience_dropout(lambda k: None, torch.ones(1, 4, dtype=bool),
                         'random')


def test_threshold_modes_and_background():
    maps = torch.tensor([[[0., 1.], [2., 4.]], [[0., 0.], [0., 0.]]])
    binary = threshold_maps(maps, 0.3, 'binary')
    assert binary[0].tolist() == [[0., 0.], [1., 1.]]
    assert binary[1].sum() == 0  # a constant map has no "on" pixel
    masked = threshold_maps(maps, 0.3, 'masked')
    assert masked[0].tolist() == [[0., 0.], [2., 4.]]
    with_bg = add_background(binary)
    assert with_bg.shape[0] == 3
    assert with_bg[0].tolist() == [[1., 1.], [0., 0.]]
    norm = minmax_per_class(maps)
    assert norm[0].max() == 1 and norm[0].min() == 0


def test_gaussian_blur_sigma_relative_to_longer_side():
    """An impulse blurred with sigma = 0.05 x 40 = 2 pixels (not x 20),
    min-max normalised: exp(-r^2 / (2 sigma^2)) on the 17 x 17 support of
    a kernel truncated at 4 sigma (scipy's default), 0 elsewhere."""
    maps = np.zeros((2, 20, 40), np.float32)
    maps[0, 10, 20] = 1
    maps[1, 5:15, 5:15] = 1
    out = gaussian_blur(maps, 0.05)
    sigma, radius = 2.0, 8
    dy, dx = np.meshgrid(np.arange(20) - 10, np.arange(40) - 20,
                         indexing='ij')
    expected = np.exp(-(dy ** 2 + dx ** 2) / (2 * sigma ** 2))
    expected[(abs(dy) > radius) | (abs(dx) > radius)] = 0
    # fp32: two 17-tap passes and the min-max division, values <= 1
    atol = 2 * (2 * radius + 1) * np.finfo(np.float32).eps
    np.testing.assert_allclose(out[0], expected, rtol=0, atol=atol)
    # the channels are blurred independently (sigma 0 across channels)
    assert out[1, :, 30:].max() == 0
    assert out.min() >= 0 and out.max() <= 1


def test_gaussian_blur_keeps_constant_channels():
    """Where no class is on, the background channel stays 1 after the
    blur's min-max (it used to become 0 and tie with every class)."""
    maps = np.zeros((3, 20, 30), np.float32)
    maps[0] = 1  # background: nothing on
    maps[2, 5:10, 5:10] = 1
    out = gaussian_blur(maps, 0.05)
    assert (out[0] == 1).all() and (out[1] == 0).all()
    assert out[2].max() == 1 and out[2].min() == 0
    # a class on over the whole image stays on
    full = gaussian_blur(np.stack([np.zeros((20, 30)), np.ones((20, 30))]),
                         0.05)
    assert (full.argmax(0) == 1).all()


@pytest.mark.skipif(not crf_module.crf_available(),
                    reason='pydensecrf (pydensecrf2) not installed')
def test_dense_crf_follows_colour_edges():
    image = np.zeros((24, 32, 3), np.uint8)
    image[:, 16:] = 255
    probs = np.full((2, 24, 32), 0.5, np.float32)
    # unaries slightly favour the true side, with a noisy band
    probs[0, :, :16] = 0.6
    probs[0, :, 16:] = 0.4
    probs[0, :, 12:16] = 0.45
    probs[1] = 1 - probs[0]
    out = crf_module.dense_crf(image, probs, iterations=10)
    assert out.shape == probs.shape
    # marginals normalised over C = 2 classes in fp32
    np.testing.assert_allclose(out.sum(0), 1, rtol=0,
                               atol=4 * 2 * np.finfo(np.float32).eps)
    labels = out.argmax(0)
    assert (labels[:, :16] == 0).all() and (labels[:, 16:] == 1).all()
    with pytest.raises(OVSSConfigError, match='differ in size'):
        crf_module.dense_crf(image[:10], probs)


def hide_pydensecrf(monkeypatch):
    """Make ``import pydensecrf`` fail as on a machine without it."""
    for name in ('pydensecrf', 'pydensecrf.densecrf', 'pydensecrf.utils'):
        monkeypatch.setitem(sys.modules, name, None)


def test_crf_missing_gives_install_hint(monkeypatch):
    """Runs with and without pydensecrf: its import is made to fail."""
    hide_pydensecrf(monkeypatch)
    assert not crf_module.crf_available()
    with pytest.raises(OVSSConfigError, match='pydensecrf2'):
        crf_module.require_crf()
    with pytest.raises(OVSSConfigError, match='model.crf=None'):
        crf_module.dense_crf(np.zeros((2, 2, 3), np.uint8),
                             np.full((2, 2, 2), 0.5, np.float32))
