"""ZegCLIP / CLIP-RC losses against hand computations (explicit loops)."""
import math

import pytest
import torch

from mmseg_ovss.models.losses.zero_shot_losses import (FeatureRecoveryLoss,
                                                       PerClassBCELoss,
                                                       SigmoidFocalDiceLoss)
from mmseg_ovss.utils.errors import OVSSConfigError

IGNORE = 255


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _tol(n):
    """float32 reductions of n terms, computed against float64 loops."""
    return 8 * torch.finfo(torch.float32).eps * math.sqrt(n)


@pytest.fixture
def case():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 2, 3, generator=gen) * 2
    labels = torch.tensor([[[0, 0, 2], [IGNORE, 2, 2]],
                           [[1, 1, IGNORE], [IGNORE, 1, 1]]])
    return logits, labels


def _hand_nel(logits, labels, alpha=0.25, gamma=2.0, exclude=False):
    b, c, h, w = logits.shape
    present = [[any(int(labels[i, y, x]) == k for y in range(h)
                    for x in range(w)) for k in range(c)] for i in range(b)]
    count = max(1, sum(sum(p) for p in present))
    focal_total, dice_total = 0.0, 0.0
    for i in range(b):
        for k in range(c):
            focal_sum, inter, psum, tsum, valid = 0.0, 0.0, 0.0, 0.0, 0
            for y in range(h):
                for x in range(w):
                    lab = int(labels[i, y, x])
                    if exclude and lab == IGNORE:
                        continue
                    valid += 1
                    t = 1.0 if lab == k else 0.0
                    z = float(logits[i, k, y, x])
                    p = _sigmoid(z)
                    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
                    p_t = p * t + (1 - p) * (1 - t)
                    a_t = alpha * t + (1 - alpha) * (1 - t)
                    focal_sum += a_t * (1 - p_t) ** gamma * ce
                    inter += p * t
                    psum += p
                    tsum += t
            focal_total += focal_sum / max(valid, 1)
            if present[i][k]:
                dice_total += 1 - (2 * inter + 1) / (psum + tsum + 1)
    return focal_total / count, dice_total / count


def test_focal_dice_match_hand_computation(case):
    logits, labels = case
    loss = SigmoidFocalDiceLoss(focal_weight=100.0, dice_weight=1.0)
    out = loss(logits, labels, ignore_index=IGNORE)
    focal, dice = _hand_nel(logits, labels)
    assert out['loss_focal'].item() == pytest.approx(100 * focal,
                                                     rel=_tol(36))
    assert out['loss_dice'].item() == pytest.approx(dice, rel=_tol(36))


def test_focal_dice_exclude_ignored_and_weights(case):
    logits, labels = case
    loss = SigmoidFocalDiceLoss(focal_weight=3.0, dice_weight=2.0,
                                ignored_pixels='exclude', loss_weight=0.5)
    out = loss(logits, labels, ignore_index=IGNORE)
    focal, dice = _hand_nel(logits, labels, exclude=True)
    assert out['loss_focal'].item() == pytest.approx(0.5 * 3 * focal,
                                                     rel=_tol(36))
    assert out['loss_dice'].item() == pytest.approx(0.5 * 2 * dice,
                                                    rel=_tol(36))


def test_all_ignored_image_counts_no_mask():
    """An image without labelled pixels adds focal negatives, no dice and
    no mask to the count (the count is clamped at 1)."""
    logits = torch.zeros(1, 2, 2, 2)
    labels = torch.full((1, 2, 2), IGNORE)
    out = SigmoidFocalDiceLoss()(logits, labels, ignore_index=IGNORE)
    # p = 0.5, t = 0: 0.75 * 0.25 * log 2 per element, mean over pixels,
    # summed over the 2 classes, divided by max(0, 1)
    expected = 100 * 2 * 0.75 * 0.25 * math.log(2)
    assert out['loss_focal'].item() == pytest.approx(expected, rel=1e-6)
    assert out['loss_dice'].item() == 0.0


@pytest.mark.parametrize('exclude', [False, True])
def test_per_class_bce(case, exclude):
    logits, labels = case
    mode = 'exclude' if exclude else 'negative'
    out = PerClassBCELoss(ignored_pixels=mode)(logits, labels,
                                               ignore_index=IGNORE)
    total, count = 0.0, 0
    b, c, h, w = logits.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                lab = int(labels[i, y, x])
                if exclude and lab == IGNORE:
                    continue
                for k in range(c):
                    p = _sigmoid(float(logits[i, k, y, x]))
                    t = 1.0 if lab == k else 0.0
                    total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
                    count += 1
    assert out['loss_bce'].item() == pytest.approx(total / count,
                                                   rel=_tol(36))


@pytest.fixture
def features():
    gen = torch.Generator().manual_seed(5)
    return (torch.randn(2, 3, 4, generator=gen),
            torch.randn(2, 3, 4, generator=gen))


@pytest.mark.parametrize('kind', ['l1', 'l2'])
@pytest.mark.parametrize('reduction', ['mean', 'sum'])
def test_recovery_distance(features, kind, reduction):
    pred, target = features
    loss = FeatureRecoveryLoss(loss=kind, reduction=reduction,
                               loss_weight=2.0)(pred, target)
    total = 0.0
    for i in range(2):
        for j in range(3):
            for d in range(4):
                diff = float(pred[i, j, d]) - float(target[i, j, d])
                total += abs(diff) if kind == 'l1' else diff * diff
    expected = total / 24 if reduction == 'mean' else total / 2
    assert loss.item() == pytest.approx(2.0 * expected, rel=_tol(24))


@pytest.mark.parametrize('temperature', [1.0, 0.5])
def test_recovery_kd(features, temperature):
    pred, target = features
    loss = FeatureRecoveryLoss(loss='kd', temperature=temperature)(pred,
                                                                   target)
    total = 0.0
    for i in range(2):
        for j in range(3):
            zp = [math.exp(float(v) / temperature) for v in pred[i, j]]
            zt = [math.exp(float(v) / temperature) for v in target[i, j]]
            p = [v / sum(zp) for v in zp]
            t = [v / sum(zt) for v in zt]
            total += sum(ti * math.log(ti / pi) for ti, pi in zip(t, p))
    expected = total / 6 * temperature ** 2
    assert loss.item() == pytest.approx(expected, rel=_tol(24), abs=1e-7)


def test_loss_options_are_checked():
    with pytest.raises(OVSSConfigError, match='ignored_pixels'):
        SigmoidFocalDiceLoss(ignored_pixels='drop')
    with pytest.raises(OVSSConfigError, match='Table 8'):
        FeatureRecoveryLoss(loss='cosine')
    with pytest.raises(OVSSConfigError, match='differ in shape'):
        FeatureRecoveryLoss()(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))
