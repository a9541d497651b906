"""Losses of ZegCLIP and CLIP-RC (CLIP-RC Eqs. 10-11).

* :class:`SigmoidFocalDiceLoss`: the non-mutually-exclusive loss (NEL) as
  ZegCLIP's code computes it (``ZiqinZhou66/ZegCLIP``
  ``models/losses/criterion.py`` ``SegPlusCriterion.loss_masks`` and
  ``atm_loss.py``; weights from its configs): per-class sigmoid maps, a
  sigmoid focal loss (alpha 0.25, gamma 2) x 100 plus a dice loss x 1.
* :class:`PerClassBCELoss`: the NEL as CLIP-RC's text words it (Sec. 3.5:
  sigmoid + binary cross-entropy per class).
* :class:`FeatureRecoveryLoss`: Eq. 10's recovery loss, L1 (paper), L2 or
  a distillation (KD) loss (Table 8).

Eq. 11, ``L = alpha L_NEL + beta L_recovery``: alpha is the NEL module's
``loss_weight``, beta the recovery loss's; neither is published, both
default to 1.

Targets: a pixel labelled c is positive for class c and negative for every
other class; a pixel at the ignore index (void, and the unseen classes in
inductive training) is negative for every class (ZegCLIP's one-hot targets
skip it, so its row is all zero) unless ``ignored_pixels='exclude'``.
"""
from typing import Dict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError

IGNORED_PIXELS = ('negative', 'exclude')
RECOVERY_LOSSES = ('l1', 'l2', 'kd')
RECOVERY_REDUCTIONS = ('mean', 'sum')


def class_targets(labels: Tensor, num_classes: int) -> Tensor:
    """(B, H, W) labels -> (B, C, H, W) bool one-hot targets; values
    outside 0..C-1 (the ignore index) give all-False columns."""
    classes = torch.arange(num_classes, device=labels.device)
    return labels.unsqueeze(1) == classes.view(1, -1, 1, 1)


def sigmoid_focal_map(logits: Tensor, targets: Tensor, alpha: float,
                      gamma: float):
    """Elementwise sigmoid focal loss (Lin et al., ICCV 2017, Eq. 5),
    ``alpha_t (1 - p_t)^gamma BCE(x, t)`` for bool targets t (alpha < 0
    disables alpha_t), and the sigmoid p.

    Written with z_t = x if t else -x: p_t = sigmoid(z_t) and BCE =
    softplus(-z_t), one pass over the (B, C, H, W) maps fewer than the
    textbook form.
    """
    z_t = torch.where(targets, logits, -logits)
    p_t = z_t.sigmoid()
    loss = F.softplus(-z_t) * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * torch.where(targets, alpha, 1 - alpha)
    return loss, torch.where(targets, p_t, 1 - p_t)


def mask_count(present: Tensor, average_across_processes: bool) -> Tensor:
    """Number of (image, class) masks in the batch, averaged over the
    processes of a distributed run (ZegCLIP ``SegPlusCriterion.forward``),
    at least 1; a tensor (no host sync)."""
    count = present.sum().float()
    if average_across_processes and dist.is_available() and \
            dist.is_initialized():
        count = count.clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1.0)


def _check_ignored(value: str) -> str:
    if value not in IGNORED_PIXELS:
        raise OVSSConfigError(
            f'ignored_pixels={value!r}; use one of {IGNORED_PIXELS} '
            "('negative': ZegCLIP's code)")
    return value


@MODELS.register_module()
class SigmoidFocalDiceLoss(nn.Module):
    """ZegCLIP's NEL: sigmoid focal x ``focal_weight`` + dice x
    ``dice_weight``.

    With N the number of (image, class) pairs whose class is in the image's
    labels (averaged over processes, at least 1):

    * focal = sum over images and classes of the mean over pixels of the
      focal loss, / N;
    * dice = sum over the present pairs of ``1 - (2 sum p t + 1) /
      (sum p + sum t + 1)``, p = sigmoid, / N.

    Args:
        focal_weight (float): 100 (ZegCLIP's configs, ``mask_weight``).
        dice_weight (float): 1.
        alpha (float): focal alpha (0.25).
        gamma (float): focal gamma (2).
        ignored_pixels (str): ``'negative'`` (ZegCLIP) or ``'exclude'``
            (ignored pixels take no part in either term).
        average_across_processes (bool): N averaged over the processes of a
            distributed run (ZegCLIP), so that N processes train like one.
        loss_weight (float): alpha of CLIP-RC Eq. 11.
    """

    def __init__(self,
                 focal_weight: float = 100.0,
                 dice_weight: float = 1.0,
                 alpha: float = 0.25,
                 gamma: float = 2.0,
                 ignored_pixels: str = 'negative',
                 average_across_processes: bool = True,
                 loss_weight: float = 1.0):
        super().__init__()
        self.focal_weight = float(focal_weight)
        self.dice_weight = float(dice_weight)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.ignored_pixels = _check_ignored(ignored_pixels)
        self.average_across_processes = bool(average_across_processes)
        self.loss_weight = float(loss_weight)

    def forward(self, logits: Tensor, labels: Tensor,
                ignore_index: int = 255) -> Dict[str, Tensor]:
        """(B, C, H, W) logits, (B, H, W) labels -> loss_focal, loss_dice."""
        logits = logits.float()
        targets = class_targets(labels, logits.shape[1])
        present = targets.flatten(2).any(dim=2)             # (B, C)
        count = mask_count(present, self.average_across_processes)
        focal, prob = sigmoid_focal_map(logits, targets, self.alpha,
                                        self.gamma)
        if self.ignored_pixels == 'exclude':
            valid = (labels != ignore_index).unsqueeze(1).float()
            pixels = valid.flatten(2).sum(dim=2).clamp(min=1.0)
            focal = (focal * valid).flatten(2).sum(dim=2) / pixels
            prob = prob * valid
        else:
            focal = focal.flatten(2).mean(dim=2)
        inter = (prob * targets).flatten(2).sum(dim=2)
        total = prob.flatten(2).sum(dim=2) + \
            targets.flatten(2).sum(dim=2, dtype=prob.dtype)
        dice = 1 - (2 * inter + 1) / (total + 1)
        dice = (dice * present).sum()
        weight = self.loss_weight / count
        return dict(loss_focal=focal.sum() * weight * self.focal_weight,
                    loss_dice=dice * weight * self.dice_weight)


@MODELS.register_module()
class PerClassBCELoss(nn.Module):
    """Sigmoid + binary cross-entropy per class and pixel (CLIP-RC Sec. 3.5
    "NEL"), averaged over images, classes and pixels.

    Args:
        ignored_pixels (str): ``'negative'`` (negatives for every class) or
            ``'exclude'`` (left out of the mean).
        loss_weight (float): alpha of Eq. 11.
    """

    def __init__(self, ignored_pixels: str = 'negative',
                 loss_weight: float = 1.0):
        super().__init__()
        self.ignored_pixels = _check_ignored(ignored_pixels)
        self.loss_weight = float(loss_weight)

    def forward(self, logits: Tensor, labels: Tensor,
                ignore_index: int = 255) -> Dict[str, Tensor]:
        logits = logits.float()
        targets = class_targets(labels, logits.shape[1])
        bce = F.binary_cross_entropy_with_logits(logits, targets.float(),
                                                 reduction='none')
        if self.ignored_pixels == 'exclude':
            valid = (labels != ignore_index).unsqueeze(1).float()
            count = valid.sum().clamp(min=1.0) * logits.shape[1]
            loss = (bce * valid).sum() / count
        else:
            loss = bce.mean()
        return dict(loss_bce=loss * self.loss_weight)


@MODELS.register_module()
class FeatureRecoveryLoss(nn.Module):
    """Eq. 10: distance between recovered and original features.

    Args:
        loss (str): ``'l1'`` (the paper's), ``'l2'`` (squared error) or
            ``'kd'``: the paper does not define its "KD loss"; here
            ``tau^2 KL(softmax(t / tau) || softmax(p / tau))`` over the
            channels of each token (Hinton et al. 2015).
        reduction (str): ``'mean'`` over elements (tokens for KD), or
            ``'sum'`` over tokens and channels per image (Eq. 10 read
            literally), averaged over images.
        temperature (float): tau of the KD loss.
        loss_weight (float): beta of Eq. 11.
    """

    def __init__(self, loss: str = 'l1', reduction: str = 'mean',
                 temperature: float = 1.0, loss_weight: float = 1.0):
        super().__init__()
        if loss not in RECOVERY_LOSSES:
            raise OVSSConfigError(
                f'recovery loss={loss!r}; use one of {RECOVERY_LOSSES} '
                '(CLIP-RC Table 8)')
        if reduction not in RECOVERY_REDUCTIONS:
            raise OVSSConfigError(
                f'recovery reduction={reduction!r}; use one of '
                f'{RECOVERY_REDUCTIONS}')
        if not float(temperature) > 0:
            raise OVSSConfigError(
                f'recovery temperature={temperature!r} must be > 0')
        self.loss = loss
        self.reduction = reduction
        self.temperature = float(temperature)
        self.loss_weight = float(loss_weight)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """(B, ..., D) recovered and original features (same shape)."""
        if pred.shape != target.shape:
            raise OVSSConfigError(
                f'recovered features {tuple(pred.shape)} and targets '
                f'{tuple(target.shape)} differ in shape')
        pred, target = pred.float(), target.float()
        if self.loss == 'kd':
            tau = self.temperature
            log_p = F.log_softmax(pred / tau, dim=-1)
            log_t = F.log_softmax(target / tau, dim=-1)
            per = (log_t.exp() * (log_t - log_p)).sum(dim=-1) * tau ** 2
        elif self.loss == 'l1':
            per = (pred - target).abs()
        else:
            per = (pred - target) ** 2
        if self.reduction == 'mean':
            loss = per.mean()
        else:
            loss = per.sum() / pred.shape[0]
        return loss * self.loss_weight
