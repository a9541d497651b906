"""FreeCP on a batch of sliding windows (Sec. 3, Eqs. 1-8).

``FreeCPWindowPipeline`` holds the method's options; ``__call__`` turns the
query activation maps of B windows, their attention affinity and their
pixels into purified refined class maps: :meth:`refine` (Eqs. 1-3) then
:meth:`purify` (Eqs. 5-8), which the head can also run once per image on
stitched maps. Text handling (templates or descriptions) lives in the head.
Reference code: ``chenqi1126/FreeCP`` (freecp_segmentor.py).
"""
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from mmseg_ovss.utils.errors import OVSSConfigError
from .affinity import attention_affinity, transition_matrix
from .cam import minmax_normalize, queries_to_classes
from .consistency import SC_METRICS
from .purification import (COMPONENT_BACKENDS, ELIMINATION_MODES,
                           AmbiguityGroups, CropVotes, ambiguity_groups,
                           classify_group_crops, eliminate_ambiguity,
                           redundancy_purification)
from .refinement import class_box_masks, refine_activations

# Table 3: which purification steps run, in order.
PURIFICATION_ORDERS = {
    'none': (),
    'rp': ('rp', ),
    'ap': ('ap', ),
    'ap_rp': ('ap', 'rp'),
    'rp_ap': ('rp', 'ap'),
}
CAM_NORMALIZATIONS = ('global', 'per_class', 'none')
# How Eq. 8 embeds a box: 'crop' (the paper and the authors: the box's
# pixels, resized, through CLIP) or 'window_readout' (a speed option: the
# CLS query of CLIP's last block over the window tokens inside the box).
BOX_ENCODERS = ('crop', 'window_readout')


@dataclass
class PurificationEvent:
    """What one purification step decided (given to ``purify``'s
    ``observer``).

    Attributes:
        step: ``'start'`` (before any step), ``'rp'`` (Eq. 5), ``'groups'``
            (Eqs. 6-7), ``'crops'`` (Eq. 8), ``'ap'`` (after the
            elimination) or ``'end'``.
        keep: (B, K') candidates after the step.
        rp_scores: (B, K') SC(M_c, refined_c) of Eq. 5 (``'rp'`` only).
        groups: the ambiguity groups (``'groups'``, ``'crops'``).
        votes: the crop votes (``'crops'``).
        maps: ``'end'``: the purified (B, K', h, w) maps.
    """
    step: str
    keep: Tensor
    rp_scores: Optional[Tensor] = None
    groups: Optional[AmbiguityGroups] = None
    votes: Optional[CropVotes] = None
    maps: Optional[Tensor] = None


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise OVSSConfigError(
            f'FreeCP option {name}={value!r} is not one of {tuple(allowed)}')


class FreeCPWindowPipeline:
    """The method's steps with every option of the paper and the code.

    Args:
        rp_threshold: T_rp of Eq. 5.
        ap_threshold: T_ap of Eq. 7.
        purification: ``'rp_ap'`` (FreeCP), ``'rp'``, ``'ap'``, ``'ap_rp'``
            or ``'none'`` (refinement only), Table 3.
        cam_normalization: normalisation of the CAMs fed to the box masks
            and the refinement: ``'global'`` (authors: one min-max over all
            queries and positions of a window), ``'per_class'`` or
            ``'none'`` (the paper's plain softmax maps).
        affinity_head: None averages heads (paper); an int uses one head
            (the authors' GEM runs use head 0).
        affinity_normalize_rounds, affinity_symmetrize, affinity_power:
            CLIP-ES transition matrix (authors: 3, True, 2); ``0, False, 1``
            gives the paper's raw Eq. 2 average.
        box_mask: mask the affinity with each class's CAM boxes before
            propagating (authors, CLIP-ES); False is the paper's Eq. 3.
        box_threshold: relative threshold of box extraction (0.4).
        clip_box_border: CLIP-ES clips box ends to ``size - 1``.
        rp_metric: ``'half_dice'`` (authors) or ``'iou'`` (paper Eq. 4).
        ap_metric: ``'soft_iou'`` (authors) or ``'iou'`` (paper Eq. 4).
        ap_elimination: ``'window'`` (authors: a member that wins no crop is
            dropped from the window) or ``'local'`` (paper: losers are
            zeroed inside each box).
        crop_size: side of the resized crops (112).
        crop_holes: also classify the boxes of hole contours (CLIP-ES's
            ``RETR_TREE``, authors and paper); False classifies the outer
            contours' boxes only (fewer crops, a speed option).
        crop_deduplicate: encode each distinct crop of a round once
            (identical pixels, e.g. one box in two groups or one image
            region in two aligned windows); the embeddings are those of
            encoding every crop (exact), only the encoder's batch shrinks.
        box_encoder: how Eq. 8 embeds a box: ``'crop'`` (default, the
            paper and the authors' code: the box's pixels resized to
            ``crop_size`` and encoded by CLIP) or ``'window_readout'``, a
            speed option that changes results: the last block of the
            unmodified CLIP path re-run for the CLS query over the window's
            tokens inside the box (``DenseCLIPFeatures.encode_regions``; no
            crop forwards, so ambiguity purification costs about as much
            as no purification).
        components: connected components of the ambiguity graph (Eq. 7)
            with ``'scipy'``, ``'torch'`` (device ops, no host round trip)
            or ``'auto'`` (torch on accelerators, scipy on the CPU); the
            same groups either way. Also picks the box labelling of
            :func:`mmseg_ovss.utils.boxes.score_map_boxes`.

    ``purify`` takes an optional ``observer``: a callable that receives a
    :class:`PurificationEvent` after each step (what the step decided); it
    costs nothing when None.
    """

    def __init__(self,
                 rp_threshold: float = 0.15,
                 ap_threshold: float = 0.7,
                 purification: str = 'rp_ap',
                 cam_normalization: str = 'global',
                 affinity_head: Optional[int] = None,
                 affinity_normalize_rounds: int = 3,
                 affinity_symmetrize: bool = True,
                 affinity_power: int = 2,
                 box_mask: bool = True,
                 box_threshold: float = 0.4,
                 clip_box_border: bool = True,
                 rp_metric: str = 'half_dice',
                 ap_metric: str = 'soft_iou',
                 ap_elimination: str = 'window',
                 crop_size: int = 112,
                 crop_holes: bool = True,
                 crop_deduplicate: bool = True,
                 box_encoder: str = 'crop',
                 components: str = 'auto'):
        _choice('purification', purification, PURIFICATION_ORDERS)
        _choice('cam_normalization', cam_normalization, CAM_NORMALIZATIONS)
        _choice('rp_metric', rp_metric, SC_METRICS)
        _choice('ap_metric', ap_metric, SC_METRICS)
        _choice('ap_elimination', ap_elimination, ELIMINATION_MODES)
        _choice('components', components, COMPONENT_BACKENDS)
        _choice('box_encoder', box_encoder, BOX_ENCODERS)
        if affinity_power < 1 or affinity_normalize_rounds < 0:
            raise OVSSConfigError(
                'affinity_power must be >= 1 and affinity_normalize_rounds '
                f'>= 0, got {affinity_power} and {affinity_normalize_rounds}')
        self.rp_threshold = float(rp_threshold)
        self.ap_threshold = float(ap_threshold)
        self.steps = PURIFICATION_ORDERS[purification]
        self.cam_normalization = cam_normalization
        self.affinity_head = affinity_head
        self.affinity_normalize_rounds = affinity_normalize_rounds
        self.affinity_symmetrize = affinity_symmetrize
        self.affinity_power = affinity_power
        self.box_mask = box_mask
        self.box_threshold = box_threshold
        self.clip_box_border = clip_box_border
        self.rp_metric = rp_metric
        self.ap_metric = ap_metric
        self.ap_elimination = ap_elimination
        self.crop_size = crop_size
        self.crop_holes = crop_holes
        self.crop_deduplicate = bool(crop_deduplicate)
        self.box_encoder = box_encoder
        self.components = components

    @property
    def uses_crops(self) -> bool:
        return 'ap' in self.steps

    def normalize_cams(self, query_maps: Tensor) -> Tensor:
        """Normalise (B, Q, h, w) softmax maps as configured."""
        if self.cam_normalization == 'none':
            return query_maps
        return minmax_normalize(
            query_maps, per_channel=self.cam_normalization == 'per_class')

    def affinity(self, attn_weights, layers: Sequence[int],
                 captured: Union[None, str, int] = None) -> Tensor:
        """Eq. 2 and the transition matrix: (B, N, N). ``captured`` is
        ``DenseCLIPFeatures.attn_heads``."""
        affinity = attention_affinity(attn_weights, layers,
                                      self.affinity_head, captured)
        return transition_matrix(affinity, self.affinity_normalize_rounds,
                                 self.affinity_symmetrize,
                                 self.affinity_power)

    def refine(self, query_maps: Tensor, query_to_class: Tensor,
               classes: Union[Tensor, Sequence[int]],
               transition: Tensor) -> Tuple[Tensor, Tensor]:
        """Eqs. 1 and 3: class CAMs and their refined maps.

        Returns:
            cams: (B, K', h, w) softmax maps of the chosen classes (what
                RP compares against, Eq. 5).
            refined: (B, K', h, w) refined maps in [0, 1].
        """
        classes = torch.as_tensor(classes, dtype=torch.long,
                                  device=query_maps.device)
        if classes.numel() == 0:  # e.g. a vocabulary of background only
            empty = query_maps.new_zeros(query_maps.shape[0], 0,
                                         *query_maps.shape[2:])
            return empty, empty
        num_classes = int(query_to_class.max()) + 1
        cams = queries_to_classes(query_maps, query_to_class,
                                  num_classes)[:, classes]
        normed = queries_to_classes(self.normalize_cams(query_maps),
                                    query_to_class, num_classes)[:, classes]
        masks = class_box_masks(normed, self.box_threshold,
                                self.clip_box_border) \
            if self.box_mask else None
        return cams, refine_activations(normed, transition, masks)

    def purify(self,
               cams: Tensor,
               refined: Tensor,
               classes: Union[Tensor, Sequence[int]],
               images: Optional[Tensor] = None,
               patch_size: int = 16,
               encode_image: Optional[Callable[[Tensor], Tensor]] = None,
               class_embeddings: Optional[Tensor] = None,
               observer: Optional[Callable[[PurificationEvent], None]] = None,
               encode_regions: Optional[Callable[[Tensor, Tensor],
                                                 Tensor]] = None
               ) -> Tensor:
        """Eqs. 5-8 in the configured order on B windows (or images).

        Args:
            cams, refined: (B, K', h, w) from :meth:`refine` (or stitched
                over the windows of an image).
            classes: the vocabulary index of each of the K' channels.
            images: (B, 3, h * patch_size, w * patch_size) the pixels the
                maps cover (crops of ambiguity purification).
            observer: called with a :class:`PurificationEvent` at the
                start, after each step and at the end (e.g. the stage
                recorder of ``mmseg_ovss.visualization.freecp_stages``).
            encode_regions: ``DenseCLIPFeatures.encode_regions`` of these
                windows (``box_encoder='window_readout'`` only).
        Returns:
            (B, K', h, w) purified maps; removed classes are zero.
        """
        classes = torch.as_tensor(classes, dtype=torch.long,
                                  device=refined.device)
        if classes.numel() == 0:
            return refined
        keep = torch.ones(refined.shape[:2], dtype=torch.bool,
                          device=refined.device)
        if observer is not None:
            observer(PurificationEvent('start', keep))
        suppress = None
        current = refined
        for step in self.steps:
            if step == 'rp':
                keep, scores = redundancy_purification(
                    cams, current, keep, self.rp_threshold, self.rp_metric,
                    return_scores=True)
                if observer is not None:
                    observer(PurificationEvent('rp', keep, rp_scores=scores))
            else:
                keep, local = self._ambiguity(current, keep, images,
                                              patch_size, encode_image,
                                              class_embeddings, classes,
                                              observer, encode_regions)
                if local is not None:
                    suppress = local if suppress is None else suppress | local
                if observer is not None:
                    observer(PurificationEvent('ap', keep))
            current = refined * keep[:, :, None, None]
            if suppress is not None:
                current = current.masked_fill(suppress, 0)
        if observer is not None:
            observer(PurificationEvent('end', keep, maps=current))
        return current

    def __call__(self,
                 query_maps: Tensor,
                 query_to_class: Tensor,
                 classes: Union[Tensor, Sequence[int]],
                 transition: Tensor,
                 images: Optional[Tensor] = None,
                 patch_size: int = 16,
                 encode_image: Optional[Callable[[Tensor], Tensor]] = None,
                 class_embeddings: Optional[Tensor] = None,
                 encode_regions: Optional[Callable[[Tensor, Tensor],
                                                   Tensor]] = None
                 ) -> Tensor:
        """Purified refined maps of the chosen classes, per window
        (:meth:`refine` then :meth:`purify`).

        Args:
            query_maps: (B, Q, h, w) Eq. 1 softmax maps over all queries
                (background synonyms included).
            query_to_class: (Q, ) class of each query.
            classes: the K' classes to refine and purify (the foreground).
            transition: (B, N, N) from :meth:`affinity`.
            images, patch_size, encode_image, class_embeddings: what the
                crop classifier needs (ambiguity purification only);
                ``class_embeddings`` has one row per class of the
                vocabulary; ``encode_regions`` for
                ``box_encoder='window_readout'``.
        Returns:
            (B, K', h, w) maps in [0, 1]; removed classes are zero.
        """
        cams, refined = self.refine(query_maps, query_to_class, classes,
                                    transition)
        return self.purify(cams, refined, classes, images, patch_size,
                           encode_image, class_embeddings,
                           encode_regions=encode_regions)

    def _ambiguity(self, maps, keep, images, patch_size, encode_image,
                   class_embeddings, classes, observer=None,
                   encode_regions=None):
        groups = ambiguity_groups(maps, keep, self.ap_threshold,
                                  self.ap_metric, self.components)
        if observer is not None:
            observer(PurificationEvent('groups', keep, groups=groups))
        if len(groups) == 0:
            return keep, None
        readout = self.box_encoder == 'window_readout'
        if readout and encode_regions is None:
            raise OVSSConfigError(
                "box_encoder='window_readout' reads boxes from the windows' "
                'tokens, but no encode_regions was given (the image-wide '
                "purification_scope='image' has none); use a backbone that "
                "fills DenseCLIPFeatures.encode_regions, or "
                "box_encoder='crop'")
        if class_embeddings is None or (not readout and (
                images is None or encode_image is None)):
            raise OVSSConfigError(
                'ambiguity purification needs the window images, the '
                'unmodified CLIP image encoder and class embeddings; use a '
                'backbone that fills DenseCLIPFeatures.encode_image')
        votes = classify_group_crops(groups, maps, images, patch_size,
                                     encode_image,
                                     class_embeddings[classes],
                                     self.crop_size, self.box_threshold,
                                     self.clip_box_border, self.crop_holes,
                                     winner_sets_only=(
                                         self.ap_elimination == 'window'),
                                     deduplicate=self.crop_deduplicate,
                                     components=self.components,
                                     encode_regions=(encode_regions
                                                     if readout else None))
        if observer is not None:
            observer(PurificationEvent('crops', keep, groups=groups,
                                       votes=votes))
        return eliminate_ambiguity(groups, votes, keep, maps.shape[-2:],
                                   self.ap_elimination)
