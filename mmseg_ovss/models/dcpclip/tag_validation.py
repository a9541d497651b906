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
"""
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS
from mmseg_ovss.clip.vocabulary import Vocabulary, name_key, read_name_lists
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


def connected_regions(labels: Tensor) -> Tensor:
    """4-connected components of equal labels: (B, H, W) long -> (B, H, W)
    component ids (the smallest flat pixel index of each component).

    Min-label propagation between equal neighbours with pointer jumping;
    a few host syncs check convergence (inference only)."""
    batch, height, width = labels.shape
    flat = torch.arange(height * width, device=labels.device)
    ids = flat.view(1, height, width).expand(batch, -1, -1).clone()
    big = height * width
    while True:
        previous = ids
        for _ in range(4):
            best = ids
            for dim, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
                neighbour = torch.roll(ids, step, dims=dim)
                same = labels == torch.roll(labels, step, dims=dim)
                # no wrap-around across the border
                edge = torch.zeros_like(same)
                index = 0 if step == 1 else -1
                edge.select(dim, index).fill_(True)
                usable = same & ~edge
                best = torch.minimum(best, torch.where(usable, neighbour,
                                                       big))
            ids = best
            # pointer jumping: adopt the id of the pixel one's id names
            ids = torch.gather(ids.flatten(1), 1, ids.flatten(1)).view_as(ids)
        if torch.equal(ids, previous):
            return ids


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
                mapped = self.name_map.get(name_key(name), (name, ))
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

    def forward(self, scores: Tensor, features: Tensor, text: Tensor,
                class_names: Sequence[str],
                candidate_mask: Optional[Tensor] = None) -> Tensor:
        """Validate the labels of one batch.

        Args:
            scores: (B, C, H, W) class scores (argmax = label).
            features: (B, D, h, w) features in the text space.
            text: (C, D) class embeddings.
            class_names: the C class names.
            candidate_mask: (B, C) bool, the classes re-scoring may choose
                with ``candidates='selected'``.

        Returns:
            (B, C, H, W) scores whose argmax is the validated label.
        """
        labels = scores.argmax(dim=1)
        seen = self.seen_mask(class_names, scores.device)
        if bool(seen.all()):
            return scores
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
        validated = new_label[region_index]
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
