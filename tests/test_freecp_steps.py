"""FreeCP's steps (Eqs. 1-8) against direct computations on small tensors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmseg_ovss.freecp.affinity import attention_affinity, transition_matrix
from mmseg_ovss.freecp.cam import (minmax_normalize, queries_to_classes,
                                   query_activation_maps)
from mmseg_ovss.freecp.consistency import (pairwise_consistency,
                                           spatial_consistency)
from mmseg_ovss.freecp.crops import crop_and_resize
from mmseg_ovss.freecp.refinement import class_box_masks, refine_activations
from mmseg_ovss.utils.boxes import (box_union_masks, contour_boxes,
                                    score_map_boxes)


EPS = float(torch.finfo(torch.float32).eps)


@pytest.mark.parametrize('scale', [100.0, 1 / 0.07])
def test_eq1_softmax_of_scaled_cosine(scale):
    torch.manual_seed(0)
    feats, text = torch.randn(2, 8, 3, 4), torch.randn(5, 8)
    maps = query_activation_maps(feats, text, logit_scale=scale)
    f = feats.permute(0, 2, 3, 1).double().numpy()
    f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    t = text.double().numpy()
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    logits = scale * f @ t.T
    expect = np.exp(logits - logits.max(-1, keepdims=True))
    expect /= expect.sum(-1, keepdims=True)
    # float32 against float64: the cosines (D = 8 terms and two norms) are
    # off by about (D + 4) * eps, the logits by scale times that, and the
    # softmax passes a logit error d on as a relative error of 2 d (p <= 1)
    atol = 2 * scale * (8 + 4) * EPS
    np.testing.assert_allclose(maps.permute(0, 2, 3, 1).numpy(), expect,
                               atol=atol, rtol=0)


def test_synonym_max_and_normalisations():
    torch.manual_seed(1)
    maps = torch.rand(2, 5, 3, 3)
    q2c = torch.tensor([0, 0, 1, 2, 2])
    out = queries_to_classes(maps, q2c, 3)
    assert torch.equal(out[:, 0], maps[:, :2].amax(1))
    assert torch.equal(out[:, 1], maps[:, 2])
    assert torch.equal(out[:, 2], maps[:, 3:].amax(1))
    glob = minmax_normalize(maps, per_channel=False)
    for b in range(2):
        lo, hi = maps[b].min(), maps[b].max()
        torch.testing.assert_close(glob[b], (maps[b] - lo) / (hi - lo))
    per = minmax_normalize(maps, per_channel=True)
    for b in range(2):
        for c in range(5):
            lo, hi = maps[b, c].min(), maps[b, c].max()
            torch.testing.assert_close(per[b, c],
                                       (maps[b, c] - lo) / (hi - lo))


def _authors_transition(attn):
    """CLIP-ES recipe written out step by step on one (N, N) matrix."""
    trans = attn / attn.sum(0, keepdims=True)
    trans = trans / trans.sum(1, keepdims=True)
    for _ in range(2):
        trans = trans / trans.sum(0, keepdims=True)
        trans = trans / trans.sum(1, keepdims=True)
    trans = (trans + trans.T) / 2
    return trans @ trans


def test_eq2_affinity_and_transition_matrix():
    torch.manual_seed(2)
    attn = {i: torch.rand(2, 3, 7, 7).softmax(-1) for i in range(4)}
    aff = attention_affinity(attn, [0, 1, 2])
    expect = torch.stack([attn[i] for i in range(3)]).mean(0).mean(1)
    torch.testing.assert_close(aff, expect[:, 1:, 1:])
    head0 = attention_affinity(attn, [3], head=0)
    torch.testing.assert_close(head0, attn[3][:, 0, 1:, 1:])
    trans = transition_matrix(aff)
    # float32 against float64 of positive entries: 6 normalisations divide
    # by N-term sums, the square sums N products: (7 N + 8) * eps relative
    n = aff.shape[-1]
    for b in range(2):
        expect = _authors_transition(aff[b].double().numpy())
        np.testing.assert_allclose(trans[b].numpy(), expect,
                                   rtol=(7 * n + 8) * EPS, atol=0)
    raw = transition_matrix(aff, normalize_rounds=0, symmetrize=False, power=1)
    torch.testing.assert_close(raw, aff)
    with pytest.raises(KeyError, match='not captured'):
        attention_affinity(attn, [5])


def test_eq3_box_masked_refinement():
    torch.manual_seed(3)
    cams = torch.rand(2, 3, 4, 5)
    trans = torch.rand(2, 20, 20)
    masks = torch.rand(2, 3, 4, 5) > 0.5
    out = refine_activations(cams, trans, masks, normalize=False)
    # sums of N = 20 products of values in [0, 1], in another order
    atol = 20 * 20 * EPS
    for b in range(2):
        for c in range(3):
            # authors: (T * mask[None, :]) @ cam
            full = trans[b] * masks[b, c].reshape(1, -1).float()
            expect = (full @ cams[b, c].reshape(-1, 1)).view(4, 5)
            torch.testing.assert_close(out[b, c], expect, atol=atol, rtol=0)
    plain = refine_activations(cams, trans, None, normalize=True)
    expect = torch.einsum('bij,bkj->bki', trans.double(),
                          cams.flatten(2).double()).view(2, 3, 4, 5)
    low = expect.amin((2, 3), keepdim=True)
    high = expect.amax((2, 3), keepdim=True)
    expect = (expect - low) / (high - low)
    # 20-term sums (relative 20 eps of their max) divided by the range
    amp = (high / (high - low)).max()
    torch.testing.assert_close(plain.double(), expect, rtol=0,
                               atol=float(4 * 20 * EPS * amp))


def _random_maps(seed, count=24, size=(12, 16)):
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, size[0] // 4, size[1] // 4, generator=gen)
    smooth = F.interpolate(coarse, size=size, mode='bilinear',
                           align_corners=False)[:, 0]
    noise = torch.rand(count, *size, generator=gen)
    maps = torch.cat([smooth, noise, 0.5 * smooth + 0.5 * noise])
    maps[0] = 0  # no foreground
    maps[1] = 0.3  # flat: everything is foreground
    return maps


@pytest.mark.parametrize('clip_last', [True, False])
def test_fast_boxes_equal_contour_reference(clip_last):
    maps = _random_maps(4)
    boxes, index = score_map_boxes(maps, 0.4, clip_last=clip_last)
    for m in range(len(maps)):
        got = sorted(map(tuple, boxes[index == m].tolist()))
        want = sorted(map(tuple, contour_boxes(maps[m].numpy(), 0.4,
                                               clip_last).tolist()))
        assert got == want, f'map {m}'
    masks = class_box_masks(maps[None], 0.4, clip_last)[0]
    for m in range(len(maps)):
        paint = np.zeros(maps.shape[1:], dtype=bool)
        for x0, y0, x1, y1 in contour_boxes(maps[m].numpy(), 0.4, clip_last):
            paint[y0:y1, x0:x1] = True
        assert np.array_equal(masks[m].numpy(), paint), f'map {m}'


def test_box_union_masks_rejects_bad_shape():
    with pytest.raises(ValueError, match='expects'):
        score_map_boxes(torch.rand(2, 2, 4, 4))
    mask = box_union_masks(torch.tensor([[1, 0, 3, 2]]), torch.tensor([1]),
                           2, (3, 4))
    assert not mask[0].any() and mask[1].sum() == 4


def test_eq4_spatial_consistency_variants():
    torch.manual_seed(5)
    x, y = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    iou = spatial_consistency(x, y, 'iou')
    torch.testing.assert_close(
        iou, (x * y).sum((1, 2)) / (x + y - x * y).sum((1, 2)))
    dice = spatial_consistency(x, y, 'half_dice')
    torch.testing.assert_close(
        dice, (x * y).sum((1, 2)) / (x.sum((1, 2)) + y.sum((1, 2))))
    soft = spatial_consistency(x, y, 'soft_iou')
    torch.testing.assert_close(
        soft,
        torch.minimum(x, y).sum((1, 2)) / torch.maximum(x, y).sum((1, 2)))
    assert torch.all(spatial_consistency(x, x, 'half_dice') <= 0.5)
    with pytest.raises(ValueError, match='unknown'):
        spatial_consistency(x, y, 'dice')


@pytest.mark.parametrize('metric', ['iou', 'half_dice', 'soft_iou'])
def test_eq6_pairwise_consistency(metric):
    torch.manual_seed(6)
    maps = torch.rand(2, 5, 3, 3)
    pair = pairwise_consistency(maps, metric)
    assert pair.dtype == torch.float32 and pair.shape == (2, 5, 5)
    # ratios of 9-term sums of values in [0, 1] formed in another order
    # (matrix products, |x - y| identities): a few 9 * eps relative
    atol = 4 * 9 * EPS
    for b in range(2):
        for i in range(5):
            for j in range(5):
                expect = spatial_consistency(maps[b, i], maps[b, j], metric)
                torch.testing.assert_close(pair[b, i, j], expect, atol=atol,
                                           rtol=0)


def test_eq6_soft_iou_pairs_are_float64_ratios_rounded_once():
    """The soft-IoU pairs come from float64 L1 distances: within one
    float32 rounding of sum(min) / sum(max) computed in float64, on maps
    of a FreeCP window's size (24 x 24) and an empty class list."""
    torch.manual_seed(16)
    maps = torch.rand(3, 7, 24, 24)
    maps[0, 2] = 0  # an all-zero map: 0 / (sum + eps) pairs
    pair = pairwise_consistency(maps, 'soft_iou')
    flat = maps.double().reshape(3, 7, 1, -1)
    other = maps.double().reshape(3, 1, 7, -1)
    inter = torch.minimum(flat, other).sum(-1)
    expect = inter / (torch.maximum(flat, other).sum(-1) + 1e-8)
    assert bool(((pair.double() - expect).abs() <= EPS * expect).all())
    empty = pairwise_consistency(maps[:, :0], 'soft_iou')
    assert empty.shape == (3, 0, 0)


def test_batched_crops_equal_slice_and_interpolate():
    torch.manual_seed(7)
    images = torch.randn(2, 3, 48, 64)
    boxes = torch.tensor([[0, 0, 64, 48], [16, 8, 40, 24], [60, 40, 63, 47],
                          [5, 3, 6, 4], [0, 16, 300 // 10, 48]])
    index = torch.tensor([0, 1, 1, 0, 1])
    crops = crop_and_resize(images, index, boxes, 20)
    # grid_sample maps its normalised coordinates back to pixels: about 4
    # roundings of a coordinate up to the extent (64) -> 2 * 64 * eps pixels,
    # times the largest step between neighbouring pixels; plus the rounding
    # of the bilinear combination itself (4 eps of the largest value)
    step = max(float((images.diff(dim=d)).abs().max()) for d in (-1, -2))
    atol = 2 * 64 * EPS * step + 4 * EPS * float(images.abs().max())
    for n, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        ref = F.interpolate(images[index[n]:index[n] + 1, :, y0:y1, x0:x1],
                            size=(20, 20), mode='bilinear',
                            align_corners=False)
        torch.testing.assert_close(crops[n:n + 1], ref, atol=atol, rtol=0)
