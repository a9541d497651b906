"""Dynamic Category Selection (DCP-CLIP, Sec. III-A, Eqs. 1-5).

DCP-CLIP segments only the classes that CLIP finds in an image: an image-level
set (the [CLS] token's confident classes) joined with a patch-level set (the
argmax class of every patch after the image-level dominant classes are
suppressed). The rest of the head then runs on the C' <= C selected classes of
each image, which is where the method's memory and speed come from (Table VII).

The equation bodies are missing from the paper's text; this module
reconstructs them from the prose:

- Eq. 1: ``S_p = softmax(tau * F_p T^T)`` (N x C) and ``S_g = softmax(tau *
  F_cls T^T)`` (1 x C), L2-normalised features and class embeddings (the
  template mean), ``tau`` CLIP's logit scale, softmax over the classes.
- Eq. 2 (the Hadamard product of S_p and the broadcast image-level scores):
  ``S~_p = S_p * (1 - S_g)`` (``suppression='complement'``, default);
  ``'divide'`` (S_p / S_g), ``'subtract'`` (S_p - S_g) and ``'none'`` are
  the alternatives.
- Eq. 3: ``C_p = union_i argmax_c S~_p(i, c)``.
- Eq. 4: ``C_g = {c : S_g(c) > theta}``; theta <= 0 keeps every class (Table
  VII's theta = 0 row "includes all categories"; a softmax score can
  underflow to exactly 0, so this is a rule, not a comparison).
- Eq. 5: ``C_sel = C_p | C_g`` (``combine='union'``, default, as Eq. 5 and
  Table VII); the sentence after Eq. 5 says intersection
  (``combine='intersection'``; an empty intersection keeps the image-level
  top class, so no image is left without classes).

Training rule for ground-truth classes the selection misses (not stated in
the paper): ``training_gt='force'`` adds them to the selection (default);
``'ignore'`` keeps the selection and their pixels get the ignore label (with
``ignore_mode='negative'``, the default, negatives of every selected slot;
with ``'exclude'``, out of the loss).

A batch carries a different C' per image: the selection is a boolean (B, C)
mask, and :class:`CategorySelection` packs it into (B, K) class indices
(K = the largest C' of the batch, selected classes first in vocabulary
order) with a (B, K) validity mask; :func:`gather_classes` and
:func:`scatter_classes` move per-class tensors between the two layouts.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS
from mmseg_ovss.utils.errors import OVSSConfigError

SUPPRESSIONS = ('complement', 'divide', 'subtract', 'none')
COMBINES = ('union', 'intersection')
TRAINING_GT = ('force', 'ignore')
FEATURES = ('clip', )


@dataclass
class CategorySelection:
    """The classes selected for each image of a batch.

    Attributes:
        mask: (B, C) bool, True = class selected for the image.
        index: (B, K) long, the selected class ids of each image first (in
            vocabulary order), then unselected ids as padding; K is the
            largest number of selected classes in the batch.
        valid: (B, K) bool, False at padding slots.
        image_logits: (B, C) ``tau * cos(F_cls, T)``, the [CLS] token's
            classification logits (used by the textual guidance, Eq. 7).
        image_scores: (B, C) ``S_g`` (Eq. 1).
    """
    mask: Tensor
    index: Tensor
    valid: Tensor
    image_logits: Optional[Tensor] = None
    image_scores: Optional[Tensor] = None

    @classmethod
    def from_mask(cls, mask: Tensor, **kwargs) -> 'CategorySelection':
        """Pack a (B, C) selection mask into padded per-image indices.

        One host sync (the batch's largest C') sizes the packed tensors."""
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise OVSSConfigError(
                f'a selection mask must be a (B, C) bool tensor, got '
                f'{tuple(mask.shape)} {mask.dtype}')
        counts = mask.sum(dim=1)
        width = max(int(counts.max()), 1)
        # a stable sort puts the selected ids first, in vocabulary order;
        # the padding slots hold distinct unselected ids
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True)[1]
        index = order[:, :width]
        slots = torch.arange(width, device=mask.device)
        valid = slots.unsqueeze(0) < counts.unsqueeze(1)
        return cls(mask=mask, index=index, valid=valid, **kwargs)

    @classmethod
    def everything(cls, batch_size: int, num_classes: int,
                   device=None) -> 'CategorySelection':
        """Every class for every image (no selection)."""
        mask = torch.ones(batch_size, num_classes, dtype=torch.bool,
                          device=device)
        return cls.from_mask(mask)

    @property
    def num_selected(self) -> Tensor:
        """(B,) number of selected classes per image (C')."""
        return self.valid.sum(dim=1)

    @property
    def width(self) -> int:
        """K, the packed class dimension."""
        return self.index.shape[1]


def gather_classes(values: Tensor, index: Tensor) -> Tensor:
    """Per-class values of the selected classes.

    Args:
        values: (B, C, ...) per image (cost volumes, logits, labels'
            one-hot). Values shared by the batch, (C, ...), are gathered
            with plain indexing: ``values[index]``.
        index: (B, K) class ids from :class:`CategorySelection`.

    Returns:
        (B, K, ...).
    """
    if values.dim() < 2 or values.shape[0] != index.shape[0]:
        raise OVSSConfigError(
            f'gather_classes takes (B, C, ...) values for a (B, K) index, '
            f'got {tuple(values.shape)} and {tuple(index.shape)}; index '
            'values shared by the batch as values[index]')
    shape = (*index.shape, *values.shape[2:])
    expanded = index.reshape(*index.shape,
                             *([1] * (values.dim() - 2))).expand(shape)
    return torch.gather(values, 1, expanded)


def scatter_classes(selected: Tensor, selection: CategorySelection,
                    num_classes: int, fill: float) -> Tensor:
    """(B, K, ...) values of the selected classes -> (B, C, ...), ``fill``
    at the classes an image did not select."""
    valid = selection.valid.reshape(*selection.valid.shape,
                                    *([1] * (selected.dim() - 2)))
    selected = selected.masked_fill(~valid, fill)
    out = selected.new_full(
        (selected.shape[0], num_classes, *selected.shape[2:]), fill)
    index = selection.index.reshape(*selection.index.shape,
                                    *([1] * (selected.dim() - 2)))
    return out.scatter(1, index.expand_as(selected), selected)


@MODELS.register_module()
class DynamicCategorySelection(nn.Module):
    """Select the classes of each image from CLIP's scores (Eqs. 1-5).

    Args:
        threshold (float): theta of Eq. 4 (0.5, the row chosen in Table
            VII); <= 0 keeps every class.
        combine (str): 'union' (Eq. 5, default) or 'intersection' (the
            sentence after Eq. 5).
        suppression (str): Eq. 2's suppression of the image-level dominant
            classes at patch level: 'complement' (S_p * (1 - S_g), default),
            'divide' (S_p / S_g), 'subtract' (S_p - S_g) or 'none'.
        training_gt (str): ground-truth classes the selection misses in
            training: 'force' (added, default) or 'ignore' (not added:
            their pixels get the ignore label of the slot labels, so no
            slot has them as positives; with PixelBCELoss's default
            ``ignore_mode='negative'`` they are negatives of every selected
            slot, with ``'exclude'`` they leave the loss).
        features (str): which features feed the selection: 'clip', the dense
            projected patch features and [CLS] embedding of the segmentor's
            CLIP image encoder (the fine-tuned one when CLIP trains; the
            paper does not say which).
        fixed_count (int, optional): an ANALYSIS option, not the method:
            at inference every image keeps exactly this many classes (the
            classes the rule selects first, ordered by their image-level
            score S_g, then the other classes by S_g), so that FLOPs and
            times can be measured as a function of the number of selected
            classes K (``tools/analysis/efficiency_table.py
            --num-selected``). None (default): Eqs. 1-5. Training ignores
            it.
    """

    def __init__(self,
                 threshold: float = 0.5,
                 combine: str = 'union',
                 suppression: str = 'complement',
                 training_gt: str = 'force',
                 features: str = 'clip',
                 fixed_count: Optional[int] = None):
        super().__init__()
        if fixed_count is not None and (
                isinstance(fixed_count, bool) or
                not isinstance(fixed_count, int) or fixed_count < 1):
            raise OVSSConfigError(
                f'DynamicCategorySelection fixed_count={fixed_count!r} must '
                'be a positive int (classes kept per image) or None')
        self.fixed_count = fixed_count
        for name, value, allowed in (('combine', combine, COMBINES),
                                     ('suppression', suppression,
                                      SUPPRESSIONS),
                                     ('training_gt', training_gt,
                                      TRAINING_GT),
                                     ('features', features, FEATURES)):
            if value not in allowed:
                raise OVSSConfigError(
                    f'DynamicCategorySelection {name}={value!r} is not one '
                    f'of {allowed}')
        if not isinstance(threshold, (int, float)) or threshold >= 1:
            raise OVSSConfigError(
                f'DynamicCategorySelection threshold={threshold!r} must be '
                'a number below 1 (a softmax score; 0.5 in DCP-CLIP, <= 0 '
                'keeps every class)')
        self.threshold = float(threshold)
        self.combine = combine
        self.suppression = suppression
        self.training_gt = training_gt
        self.features = features

    # ------------------------------------------------------------ scores
    @staticmethod
    def class_logits(features: Tensor, text: Tensor,
                     logit_scale: Tensor) -> Tensor:
        """``tau * cos(features, text)``: (..., D) x (C, D) -> (..., C)."""
        return logit_scale * (F.normalize(features, dim=-1)
                              @ F.normalize(text, dim=-1).t())

    def suppress(self, patch_scores: Tensor, image_scores: Tensor) -> Tensor:
        """Eq. 2: (B, N, C) patch scores with the image-level dominant
        classes (B, C) suppressed."""
        image = image_scores.unsqueeze(1)
        if self.suppression == 'complement':
            return patch_scores * (1.0 - image)
        if self.suppression == 'divide':
            return patch_scores / image.clamp_min(
                torch.finfo(image.dtype).tiny)
        if self.suppression == 'subtract':
            return patch_scores - image
        return patch_scores

    def select(self, patch_scores: Tensor, image_scores: Tensor) -> Tensor:
        """Eqs. 2-5 on softmax scores: (B, N, C), (B, C) -> (B, C) bool."""
        batch, _, num_classes = patch_scores.shape
        refined = self.suppress(patch_scores, image_scores)
        patch_mask = torch.zeros(batch, num_classes, dtype=torch.bool,
                                 device=patch_scores.device)
        patch_mask.scatter_(1, refined.argmax(dim=-1), True)
        if self.threshold <= 0:
            image_mask = torch.ones_like(patch_mask)
        else:
            image_mask = image_scores > self.threshold
        if self.combine == 'union':
            return patch_mask | image_mask
        mask = patch_mask & image_mask
        # an empty intersection keeps the image-level top class
        top = F.one_hot(image_scores.argmax(dim=-1), num_classes).bool()
        return mask | (top & ~mask.any(dim=1, keepdim=True))

    @staticmethod
    def keep_count(mask: Tensor, image_scores: Tensor, count: int) -> Tensor:
        """(B, C) mask -> exactly ``min(count, C)`` classes per image: the
        masked classes first, each group ordered by ``image_scores``."""
        count = min(int(count), mask.shape[1])
        priority = mask.to(image_scores.dtype) * 2.0 + image_scores
        keep = priority.topk(count, dim=1).indices
        return torch.zeros_like(mask).scatter(1, keep, True)

    def forward(self, patch_features: Tensor, cls_features: Tensor,
                text: Tensor, logit_scale: Tensor,
                gt_classes: Optional[Tensor] = None) -> CategorySelection:
        """Select the classes of each image.

        Args:
            patch_features: (B, D, h, w) or (B, N, D) dense CLIP features.
            cls_features: (B, D) [CLS] embedding in the same space.
            text: (C, D) class embeddings (template mean).
            logit_scale: CLIP's temperature tau (exp of the stored log).
            gt_classes: (B, C) bool, the classes present in each training
                label; with ``training_gt='force'`` they are selected.

        Returns:
            :class:`CategorySelection`.
        """
        if patch_features.dim() == 4:
            patch_features = patch_features.flatten(2).transpose(1, 2)
        with torch.no_grad():
            patch_scores = self.class_logits(patch_features, text,
                                             logit_scale).softmax(dim=-1)
        image_logits = self.class_logits(cls_features, text, logit_scale)
        image_scores = image_logits.softmax(dim=-1)
        mask = self.select(patch_scores, image_scores.detach())
        if gt_classes is not None and self.training_gt == 'force':
            mask = mask | gt_classes.to(mask.device, torch.bool)
        if self.fixed_count is not None and not self.training:
            mask = self.keep_count(mask, image_scores.detach(),
                                   self.fixed_count)
        return CategorySelection.from_mask(
            mask, image_logits=image_logits, image_scores=image_scores)
