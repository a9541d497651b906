"""FreeCP's intermediate maps of one image (Chen et al., ICCV 2025,
Figs. 2, 4 and 5).

:func:`freecp_stages` runs the segmentor's own ``predict`` on one image
with its head's :class:`~mmseg_ovss.freecp.pipeline.FreeCPWindowPipeline`
replaced, for that call only, by :class:`RecordingFreeCPPipeline`: the same
options, whose :meth:`~RecordingFreeCPPipeline.purify` runs the pipeline's
own Eqs. 5-8 and keeps what each step decided (through its ``observer``).
Everything else (windows, Eqs. 1-3, stitching, the background rule,
labels) is the segmentor's own code, so the final label
map is the segmentor's prediction (``tests/test_freecp_visualize.py``
checks it equals the plain ``predict``).

A record is one call of ``purify``: a batch of sliding windows
(``purification_scope='window'``, the authors') or the whole image's patch
grid (``'image'``).
"""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from mmseg_ovss.freecp.pipeline import (FreeCPWindowPipeline,
                                        PurificationEvent)
from mmseg_ovss.freecp.purification import AmbiguityGroups, CropVotes
from mmseg_ovss.utils.errors import OVSSConfigError


@dataclass
class PurificationRecord:
    """One ``purify`` call on B windows (or one image grid).

    Attributes:
        classes: (K', ) vocabulary index of each channel.
        cams: (B, K', h, w) the softmax maps of Eq. 1 (the initial CAMs).
        refined: (B, K', h, w) the refined maps of Eq. 3.
        images: (B, 3, H, W) the pixels the maps cover (normalised).
        patch_size: pixels per grid cell.
        steps: ``(name, keep)`` after each step: ``'rp'`` / ``'ap'`` and
            the (B, K') candidates left.
        rp_scores: (B, K') SC(M_c, refined_c) of Eq. 5 (RP's input), None
            when RP does not run.
        groups: the ambiguity groups of Eqs. 6-7 (None when AP does not
            run); ``groups.window`` indexes the B windows.
        votes: the crop votes of Eq. 8 (None when AP found no group).
        purified: (B, K', h, w) the output.
    """
    classes: Tensor
    cams: Tensor
    refined: Tensor
    images: Optional[Tensor]
    patch_size: int
    steps: List[Tuple[str, Tensor]] = field(default_factory=list)
    rp_scores: Optional[Tensor] = None
    groups: Optional[AmbiguityGroups] = None
    votes: Optional[CropVotes] = None
    purified: Optional[Tensor] = None

    @property
    def keep(self) -> Tensor:
        """(B, K') classes left after the last step."""
        if self.steps:
            return self.steps[-1][1]
        return torch.ones(self.refined.shape[:2], dtype=torch.bool,
                          device=self.refined.device)

    def keep_after(self, step: str) -> Optional[Tensor]:
        """(B, K') candidates after ``step`` ('rp' or 'ap'), or None."""
        for name, keep in self.steps:
            if name == step:
                return keep
        return None


class RecordingFreeCPPipeline(FreeCPWindowPipeline):
    """A :class:`FreeCPWindowPipeline` whose ``purify`` keeps a
    :class:`PurificationRecord` of each call in ``records``."""

    @classmethod
    def wrap(cls, pipeline: FreeCPWindowPipeline
             ) -> 'RecordingFreeCPPipeline':
        """A recording copy with every option of ``pipeline``."""
        recorder = cls.__new__(cls)
        recorder.__dict__.update(vars(pipeline))
        recorder.records = []
        return recorder

    def purify(self, cams: Tensor, refined: Tensor, classes,
               images: Optional[Tensor] = None, patch_size: int = 16,
               encode_image=None, class_embeddings: Optional[Tensor] = None,
               observer=None, encode_regions=None) -> Tensor:
        """:meth:`FreeCPWindowPipeline.purify`, its decisions recorded
        through its ``observer``."""
        record = PurificationRecord(
            torch.as_tensor(classes, dtype=torch.long,
                            device=refined.device),
            cams.detach(), refined.detach(), images, patch_size)
        self.records.append(record)

        def observe(event: PurificationEvent) -> None:
            if event.step == 'rp':
                record.rp_scores = event.rp_scores
            elif event.step == 'groups':
                record.groups = event.groups
            elif event.step == 'crops':
                record.votes = event.votes
            elif event.step == 'end':
                record.purified = event.maps.detach()
            if event.step in ('rp', 'ap'):
                record.steps.append((event.step, event.keep.clone()))
            if observer is not None:
                observer(event)

        purified = super().purify(cams, refined, classes, images, patch_size,
                                  encode_image, class_embeddings,
                                  observer=observe,
                                  encode_regions=encode_regions)
        if record.purified is None:  # no class to purify
            record.purified = purified.detach()
        return purified


@dataclass
class WindowStages:
    """The stages of one window (or of the image grid, ``'image'``
    scope), channels = the foreground classes ``classes``."""
    index: int
    box: Tuple[int, int, int, int]
    classes: List[int]
    image: Optional[Tensor]
    patch_size: int
    cams: Tensor
    refined: Tensor
    purified: Tensor
    rp_scores: Optional[Tensor]
    keep_after_rp: Optional[Tensor]
    keep: Tensor
    groups: List[List[int]]
    #: per crop: (group, (x0, y0, x1, y1) grid box, winner channel or -1,
    #: degenerate)
    crops: List[Tuple[int, Tuple[int, int, int, int], int, bool]]


@dataclass
class FreeCPStages:
    """Everything :func:`freecp_stages` recorded for one image."""
    class_names: List[str]
    background_class: Optional[int]
    scope: str
    windows: List[WindowStages]
    labels: Tensor
    seg_logits: Optional[Tensor]
    options: dict
    #: (H, W) of the model input the windows tile
    input_size: Tuple[int, int] = (0, 0)


def window_boxes(segmentor, height: int, width: int
                 ) -> List[Tuple[int, int, int, int]]:
    """``(y1, y2, x1, x2)`` of the windows ``predict`` encodes, in order
    (mmseg's slide grid, or the whole image)."""
    from mmseg_ovss.models.segmentors.clip_segmentor import slide_windows
    cfg = segmentor.test_cfg or {}
    if cfg.get('mode', 'whole') == 'whole':
        return [(0, height, 0, width)]

    def pair(value):
        return (value, value) if isinstance(value, int) else tuple(value)
    return slide_windows(height, width, pair(cfg['crop_size']),
                         pair(cfg['stride']))


def _split(record: PurificationRecord, first: int, boxes) -> list:
    """The record's B rows as :class:`WindowStages`."""
    keep = record.keep
    rp_keep = record.keep_after('rp')
    out = []
    for b in range(record.refined.shape[0]):
        groups, crops = [], []
        group_ids = []
        if record.groups is not None:
            for g in torch.nonzero(record.groups.window == b).flatten():
                group_ids.append(int(g))
                groups.append(torch.nonzero(
                    record.groups.members[g]).flatten().tolist())
        if record.votes is not None and group_ids:
            local = {g: i for i, g in enumerate(group_ids)}
            for n in range(len(record.votes.group)):
                g = int(record.votes.group[n])
                if g in local:
                    crops.append((local[g], tuple(
                        int(v) for v in record.votes.boxes[n]),
                        int(record.votes.winner[n]),
                        bool(record.votes.degenerate[n])))
        index = first + b
        out.append(WindowStages(
            index=index, box=tuple(boxes[index]),
            classes=record.classes.tolist(),
            image=None if record.images is None else record.images[b],
            patch_size=record.patch_size, cams=record.cams[b],
            refined=record.refined[b], purified=record.purified[b],
            rp_scores=None if record.rp_scores is None
            else record.rp_scores[b],
            keep_after_rp=None if rp_keep is None else rp_keep[b],
            keep=keep[b], groups=groups, crops=crops))
    return out


def freecp_stages(segmentor, inputs: Tensor, data_sample) -> FreeCPStages:
    """Segment one image with ``segmentor`` (a ``CLIPDenseSegmentor`` with
    a ``FreeCPHead``) and return its recorded stages.

    Args:
        inputs: (1, 3, H, W) normalised image (no padding).
        data_sample: its ``SegDataSample`` (``ori_shape``, ``img_shape``).
    """
    from mmseg_ovss.models.heads.freecp_head import FreeCPHead
    head = getattr(segmentor, 'decode_head', None)
    if not isinstance(head, FreeCPHead):
        raise OVSSConfigError(
            f'the model\'s decode_head is {type(head).__name__}, not '
            'FreeCPHead: give a FreeCP config (configs/freecp/*.py, e.g. '
            'configs/freecp/sclip_voc21.py)')
    if inputs.shape[0] != 1:
        raise OVSSConfigError(
            f'freecp_stages segments one image, got a batch of '
            f'{inputs.shape[0]}')
    original = head.pipeline
    recorder = RecordingFreeCPPipeline.wrap(original)
    head.pipeline = recorder
    try:
        with torch.no_grad():
            result = segmentor.predict(inputs, [data_sample])[0]
    finally:
        head.pipeline = original
    vocab = segmentor.vocabulary_embeddings()
    height, width = inputs.shape[-2:]
    scope = head.purification_scope
    boxes = window_boxes(segmentor, height, width) if scope == 'window' \
        else [(0, height, 0, width)]
    windows, first = [], 0
    if sum(r.refined.shape[0] for r in recorder.records) not in (
            0, len(boxes)):
        raise RuntimeError(
            f'FreeCP recorded {len(recorder.records)} purify calls that do '
            f'not cover the {len(boxes)} windows of test_cfg '
            f'{dict(segmentor.test_cfg)}; the segmentor changed how it runs '
            'the windows: update mmseg_ovss.visualization.freecp_stages')
    for record in recorder.records:
        windows += _split(record, first, boxes)
        first += record.refined.shape[0]
    logits = getattr(result, 'seg_logits', None)
    options = dict(
        purification=list(original.steps), rp_threshold=original.rp_threshold,
        ap_threshold=original.ap_threshold, rp_metric=original.rp_metric,
        ap_metric=original.ap_metric, ap_elimination=original.ap_elimination,
        purification_scope=scope, initial_text=head.initial_text,
        ap_text=head.ap_text, test_cfg=dict(segmentor.test_cfg or {}))
    return FreeCPStages(
        class_names=list(vocab.class_names),
        background_class=vocab.background_class, scope=scope,
        windows=windows, labels=result.pred_sem_seg.data[0],
        seg_logits=None if logits is None else logits.data, options=options,
        input_size=(int(height), int(width)))

