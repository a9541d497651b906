"""Tag Validation (DCP-CLIP, Sec. III-D, Eq. 17), inference only.

Predictions of classes seen in training are kept. Every region predicted as
an unseen class (a class of the test vocabulary that is not one of the
training classes, COCO-Stuff's 171) is re-classified: the region's features
are pooled, compared with every class embedding, and when the original label
is not among the top-k most similar classes the region takes the new best
class (Eq. 17: ``c' = argmax_c cos(pool(F, M), T_c)`` if ``c not in
top-k``, else ``c``; seen classes keep ``c``).

Reconstructions and options (the paper leaves them open):

- pooled features: CLIP's dense projected patch features (in the text
  space; the decoder's embeddings are per class and not in that space, so
  they cannot be compared with the class embeddings); pooling is
  area-weighted: each patch counts with the fraction of its pixels that
  belong to the region (a one-hot matmul, no per-class loop);
- ``region='class'`` (default): one region per predicted class of an image
  (its whole mask); ``'components'``: each 4-connected component of a
  class mask is a region;
- ``top_k`` (not stated): 5 by default;
- ``candidates='all'`` (default: every class of the vocabulary) or
  ``'selected'`` (the classes Dynamic Category Selection kept);
- seen/unseen: a test class is seen when one of its names, mapped through
  ``name_map`` (test name -> training name, a dict or a JSON file), is a
  name of a training class (``seen_classes``: a class-name file, default
  COCO-Stuff 171, or a list).

A relabelled region swaps, at its pixels, the scores of the old and the new
class, so the head still returns scores whose argmax is the validated label.
The decision (:meth:`TagValidation.decide`, labels and features -> labels)
is apart from the swap, which runs on all C classes (:func:`swap_scores`)
or on compact selected-class scores (:func:`swap_compact_scores`).
"""
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from mmseg.registry import MODELS
from mmseg_ovss.clip.vocabulary import (Vocabulary, name_key, read_name_lists,
                                        split_synonyms)
from mmseg_ovss.models.catseg.compact_labels import (carry_classes,
                                                     class_channels)
from mmseg_ovss.models.dcpclip.category_selection import CategorySelection
from mmseg_ovss.utils.boxes import LABELLINGS, label_components
from mmseg_ovss.utils.errors import OVSSConfigError

REGIONS = ('class', 'components')
CANDIDATES = ('all', 'selected')


def read_name_map(mapping: Union[None, str, dict]) -> Dict[str, Tuple[str]]:
    """Test class name -> training class name(s), from a dict or a JSON
    file; keys and names compared case- and space-insensitively. An empty
    list marks a class unseen."""
    names = read_name_lists(mapping, 'TagValidation name_map',
                            'test class names to a training class name',
                            allow_empty=True)
    return {name_key(key): value for key, value in names.items()}


def read_training_names(classes: Union[str, Sequence]) -> frozenset:
    """Name keys of the training classes (every synonym of every line)."""
    if isinstance(classes, (str, Path)):
        vocab = Vocabulary.from_file(classes)
    else:
        vocab = Vocabulary.from_names(list(classes),
                                      source='TagValidation.seen_classes')
    return frozenset(name_key(n) for names in vocab.synonyms for n in names)


#: 4-connectivity within each (h, w) slice of a (M, h, w) stack.
_CONNECT_4 = np.zeros((3, 3, 3), dtype=bool)
_CONNECT_4[1] = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def equal_label_grid(labels: Tensor) -> Tensor:
    """(B, 2H - 1, 2W - 1) bool mask whose 4-connected components are the
    4-connected components of equal labels of a (B, H, W) label map: pixel
    (i, j) sits at (2i, 2j), the cell between two 4-neighbours is set when
    their labels are equal, the cells between diagonal neighbours never."""
    batch, height, width = labels.shape
    grid = labels.new_zeros((batch, 2 * height - 1, 2 * width - 1),
                            dtype=torch.bool)
    grid[:, ::2, ::2] = True
    grid[:, ::2, 1::2] = labels[:, :, 1:] == labels[:, :, :-1]
    grid[:, 1::2, ::2] = labels[:, 1:] == labels[:, :-1]
    return grid


def connected_regions(labels: Tensor, labelling: str = 'auto') -> Tensor:
    """4-connected components of equal labels: (B, H, W) long -> (B, H, W)
    component ids (the smallest flat pixel index of each component within
    its image, whatever the labelling).

    The components of :func:`equal_label_grid` are labelled by
    ``scipy.ndimage.label`` on the host (``'scipy'``) or by
    :func:`~mmseg_ovss.utils.boxes.label_components` on the labels' device
    (``'torch'``); ``'auto'``: torch on accelerators, scipy on the CPU."""
    if labelling not in LABELLINGS:
        raise OVSSConfigError(
            f'connected_regions labelling={labelling!r} is not one of '
            f'{LABELLINGS}')
    batch, height, width = labels.shape
    grid = equal_label_grid(labels)
    grid_width = 2 * width - 1
    if labelling == 'torch' or (labelling == 'auto'
                                and labels.device.type != 'cpu'):
        # a component is named by its first grid cell in the stack, which
        # is its first pixel (a set cell between two pixels follows the
        # first of them in raster order)
        first = label_components(grid, connectivity=4)[:, ::2, ::2]
        first = first % grid.flatten(1).shape[1]
        return first // grid_width // 2 * width + first % grid_width // 2
    parts, count = ndimage.label(grid.cpu().numpy(), structure=_CONNECT_4)
    parts = torch.from_numpy(parts[:, ::2, ::2]).to(labels.device,
                                                    torch.long).flatten()
    position = torch.arange(parts.numel(), device=labels.device) % (
        height * width)
    first = torch.full((count + 1, ), height * width, dtype=torch.long,
                       device=labels.device)
    first = first.scatter_reduce(0, parts, position, reduce='amin')
    return first[parts].view(batch, height, width)


@MODELS.register_module()
class TagValidation(nn.Module):
    """Re-classify the regions predicted as unseen classes (Eq. 17).

    Args:
        seen_classes (str | list): the training classes (a class-name file,
            default COCO-Stuff 171, or a list of names / synonym lists).
        name_map (dict | str, optional): test class name -> training class
            name(s), for test names that differ from the training ones.
        top_k (int): the original label is kept when it is among the top-k
            re-scored classes (5).
        region (str): 'class' (default) or 'components'.
        candidates (str): 'all' (default) or 'selected'.
    """

    def __init__(self,
                 seen_classes: Union[str, Sequence] =
                 'data/class_names/coco_stuff171.txt',
                 name_map: Union[None, str, dict] = None,
                 top_k: int = 5,
                 region: str = 'class',
                 candidates: str = 'all'):
        super().__init__()
        if region not in REGIONS:
            raise OVSSConfigError(
                f'TagValidation region={region!r} is not one of {REGIONS}')
        if candidates not in CANDIDATES:
            raise OVSSConfigError(
                f'TagValidation candidates={candidates!r} is not one of '
                f'{CANDIDATES}')
        if not isinstance(top_k, int) or top_k < 1:
            raise OVSSConfigError(
                f'TagValidation top_k={top_k!r} must be a positive integer')
        self.training_names = read_training_names(seen_classes)
        self.name_map = read_name_map(name_map)
        self.top_k = top_k
        self.region = region
        self.candidates = candidates
        self._seen_cache: Dict[tuple, Tensor] = {}

    def seen_mask(self, class_names: Sequence[str], device=None) -> Tensor:
        """(C,) bool: which test classes are training classes."""
        key = tuple(class_names)
        if key not in self._seen_cache:
            seen = []
            for name in class_names:
                # a name listing synonyms ('road, route' in ADE-847) is seen
                # when one of them is a training name
                mapped = self.name_map.get(name_key(name)) or tuple(
                    n for n in split_synonyms(name) if n) or (name, )
                seen.append(any(name_key(n) in self.training_names
                                for n in mapped))
            self._seen_cache[key] = torch.tensor(seen, dtype=torch.bool)
        return self._seen_cache[key].to(device)

    def regions(self, labels: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Regions of a (B, H, W) label map: a (B, H, W) region index into
        the returned per-region image index (R,) and label (R,)."""
        batch, height, width = labels.shape
        if self.region == 'class':
            key = labels
            span = int(labels.max()) + 1
        else:
            key = connected_regions(labels)
            span = height * width
        offset = torch.arange(batch, device=labels.device).view(-1, 1, 1)
        unique, inverse = torch.unique(key + offset * span,
                                       return_inverse=True)
        image = unique // span
        first = torch.full((unique.numel(), ), labels.numel(),
                           device=labels.device, dtype=torch.long)
        first = first.scatter_reduce(
            0, inverse.flatten(), torch.arange(labels.numel(),
                                               device=labels.device),
            reduce='amin')
        return inverse, image, labels.flatten()[first]

    @staticmethod
    def pool(features: Tensor, region_index: Tensor,
             region_image: Tensor) -> Tensor:
        """Area-weighted mean of (B, D, h, w) features over each region of a
        (B, H, W) region map -> (R, D)."""
        batch, dims, fh, fw = features.shape
        _, height, width = region_index.shape
        rows = torch.arange(height, device=features.device) * fh // height
        cols = torch.arange(width, device=features.device) * fw // width
        cell = (rows.view(-1, 1) * fw + cols.view(1, -1)).expand(
            batch, -1, -1)
        cell = cell + torch.arange(batch, device=features.device).view(
            -1, 1, 1) * (fh * fw)
        regions = int(region_image.numel())
        weights = features.new_zeros(regions, batch * fh * fw)
        weights.index_put_((region_index.flatten(), cell.flatten()),
                           features.new_ones(region_index.numel()),
                           accumulate=True)
        weights = weights / weights.sum(dim=1, keepdim=True)
        flat = features.permute(0, 2, 3, 1).reshape(batch * fh * fw, dims)
        return weights @ flat

    def decide(self, labels: Tensor, features: Tensor, text: Tensor,
               class_names: Sequence[str],
               candidate_mask: Optional[Tensor] = None) -> Optional[Tensor]:
        """The validated labels of a (B, H, W) label map (Eq. 17): regions
        of unseen classes whose label is not among the top-k re-scored
        classes take the best one.

        Args:
            labels: (B, H, W) long, the argmax of the class scores.
            features: (B, D, h, w) features in the text space.
            text: (C, D) class embeddings.
            class_names: the C class names.
            candidate_mask: (B, C) bool, the classes re-scoring may choose
                with ``candidates='selected'``.

        Returns:
            (B, H, W) long validated labels; None when every class is seen
            (no label can change).
        """
        seen = self.seen_mask(class_names, labels.device)
        if bool(seen.all()):
            return None
        region_index, region_image, region_label = self.regions(labels)
        pooled = self.pool(F.normalize(features, dim=1), region_index,
                           region_image)
        sims = F.normalize(pooled, dim=-1) @ F.normalize(text, dim=-1).t()
        if self.candidates == 'selected' and candidate_mask is not None:
            allowed = candidate_mask[region_image]
            allowed = allowed.scatter(1, region_label.unsqueeze(1), True)
            sims = sims.masked_fill(~allowed, float('-inf'))
        top = sims.topk(min(self.top_k, sims.shape[1]), dim=1).indices
        kept = (top == region_label.unsqueeze(1)).any(dim=1)
        new_label = torch.where(kept | seen[region_label], region_label,
                                top[:, 0])
        return new_label[region_index]

    def forward(self, scores: Tensor, features: Tensor, text: Tensor,
                class_names: Sequence[str],
                candidate_mask: Optional[Tensor] = None) -> Tensor:
        """Validate the labels of one batch: :meth:`decide` on the argmax
        of (B, C, H, W) ``scores``, then :func:`swap_scores`.

        Args:
            scores: (B, C, H, W) class scores (argmax = label).
            features, text, class_names, candidate_mask: as :meth:`decide`.

        Returns:
            (B, C, H, W) scores whose argmax is the validated label.
        """
        labels = scores.argmax(dim=1)
        validated = self.decide(labels, features, text, class_names,
                                candidate_mask)
        if validated is None:
            return scores
        return swap_scores(scores, labels, validated)


def swap_scores(scores: Tensor, labels: Tensor, new_labels: Tensor) -> Tensor:
    """Swap, per pixel, the scores of ``labels`` (the argmax) and
    ``new_labels`` so the argmax becomes ``new_labels``."""
    old = labels.unsqueeze(1)
    new = new_labels.unsqueeze(1)
    old_score = scores.gather(1, old)
    new_score = scores.gather(1, new)
    out = scores.scatter(1, new, old_score)
    return out.scatter(1, old, new_score.where(new != old, old_score))


def swap_compact_scores(scores: Tensor, selection: CategorySelection,
                        labels: Tensor, new_labels: Tensor
                        ) -> Tuple[Tensor, CategorySelection]:
    """:func:`swap_scores` on (B, 1 + K, H, W) compact scores (channel 0
    the map of every class without a channel, then the slots of
    ``selection``; :mod:`~mmseg_ovss.models.catseg.compact_labels`): the
    old and new class of every relabelled pixel first get channels of
    their own (:func:`carry_classes`, a copy of the shared map for a class
    that had none), then their channels swap. Filled to all C classes,
    the result is ``swap_scores`` of the filled scores.

    Returns the (B, 1 + K', H, W) scores and their selection (the inputs
    when no label changes)."""
    num_classes = selection.mask.shape[1]
    changed = new_labels != labels
    if not bool(changed.any()):
        return scores, selection
    involved = torch.zeros(labels.shape[0], num_classes + 1,
                           dtype=torch.bool, device=labels.device)
    outside = torch.full_like(labels, num_classes)
    for classes in (labels, new_labels):
        involved.scatter_(1, torch.where(changed, classes,
                                         outside).flatten(1), True)
    scores, selection = carry_classes(scores, selection,
                                      involved[:, :num_classes])
    channels = class_channels(selection)
    # unchanged pixels swap a channel with itself (the shared map too)
    old = channels.gather(1, labels.flatten(1)).view_as(labels)
    new = channels.gather(1, new_labels.flatten(1)).view_as(labels)
    return swap_scores(scores, old, new), selection
