"""Training-free dense-CLIP segmentor (MaskCLIP, SCLIP, ClearCLIP, GEM, ...).

backbone = the registered open_clip ViT (``OpenCLIPViT``) with a dense
strategy (``backbone.dense_strategy``), text encoder = the registered
open_clip text tower (``OpenCLIPTextEncoder``: prompt-ensembled class
queries), both from one ``clip`` weights block, decode head = any
:class:`~mmseg_ovss.clip.dense_head.DenseCLIPHead` (cosine head, FreeCP).
Inference follows mmseg's ``test_cfg`` (``mode='slide'`` with ``crop_size``
and ``stride``, or ``'whole'``) with all windows of an image batched; the
window maps stay on their patch grids (:class:`StitchedMaps`), pass once per
image through the head's ``image_maps`` hook (identity except for FreeCP's
per-image purification), and are rendered in bands of output rows: stitched
(overlaps averaged), resized to the original image, turned into class scores
by the head and post-processed with the background rules of the SCLIP code
(``wangf3014/SCLIP`` clip_segmentor.py: ``area_thd``, ``prob_thd``).
Optional PAMR, and heads whose scores are not per pixel, take the whole
image at once.

The segmentor is an mmseg ``EncoderDecoder`` in its contracts (mmseg 1.x
``mmseg/models/segmentors/encoder_decoder.py`` and ``base.py``):
``encode_decode`` (window maps at input size, via ``decode_head.predict``),
``slide_inference`` / ``whole_inference`` (the same tensors as mmseg's own,
windows batched), ``inference`` (class scores, what ``postprocess_result``
argmaxes) and ``predict`` (padding removed, flips undone, resized to
``ori_shape``), so that mmseg's tools and ``tools/test.py --tta``
(:class:`~mmseg_ovss.models.segmentors.tta.CLIPSegTTAModel`) work.
"""
import dataclasses
import math
import warnings
from typing import (Callable, Dict, Iterable, List, Optional, Sequence,
                    Tuple, Union)

import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.logging import print_log
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.utils import OptSampleList, SampleList
from torch import Tensor

from mmseg_ovss.clip.dense_head import (DenseCLIPHead, StitchedMaps,
                                        band_height, linear_source,
                                        resolve_layer_indices)
from mmseg_ovss.clip.features import VocabularyEmbeddings
from mmseg_ovss.clip.precision import (check_precision, compute_dtype,
                                       dtype_name, kernel_report)
from mmseg_ovss.clip.text_encoder import vocabulary_from
from mmseg_ovss.clip.vocabulary import Vocabulary, find_background_class
from mmseg_ovss.utils.cpu_allocator import keep_freed_memory
from mmseg_ovss.utils.errors import (OVSSConfigError, OVSSDataError,
                                     options_with_defaults)
from mmseg_ovss.utils.pamr import PAMR
from mmseg_ovss.utils.profiler import profile_stage
from mmseg_ovss.freecp.gt_vocabulary import (ORACLE_WARNING,
                                             annotated_classes,
                                             restrict_vocabulary)

Window = Tuple[int, int, int, int]
#: Text-tower options that configs of the old layout gave in ``text``.
TEXT_TOWER_KEYS = ('templates', 'batch_size', 'cache_size',
                   'truncate_context')
#: ``flip_direction`` values of mmcv's ``RandomFlip`` and the image axes
#: (of a (..., H, W) tensor) each one reverses.
FLIP_AXES = {'horizontal': (-1, ), 'vertical': (-2, ),
             'diagonal': (-2, -1)}


def slide_windows(height: int, width: int, crop: Tuple[int, int],
                  stride: Tuple[int, int]) -> List[Window]:
    """mmseg's sliding-window grid: (y1, y2, x1, x2) per window.

    grids = max(H - crop + stride - 1, 0) // stride + 1; the last window is
    snapped to the border; a window is never larger than the image.
    """
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, height), min(x1 + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


def flip_direction(meta: dict) -> Optional[str]:
    """The flip an image went through (its meta ``flip`` and
    ``flip_direction``, as mmcv's ``RandomFlip`` sets them), or None."""
    if not meta.get('flip', False):
        return None
    direction = meta.get('flip_direction')
    if direction not in FLIP_AXES:
        raise OVSSDataError(
            f'image meta flip=True with flip_direction={direction!r}: not '
            f'one of {tuple(FLIP_AXES)}, so the flip cannot be undone; use '
            "RandomFlip(direction='horizontal'|'vertical'|'diagonal')")
    return direction


def flip_back(tensor: Tensor, direction: Optional[str]) -> Tensor:
    """Undo a flip of ``direction`` (None: none) on a (..., H, W) tensor."""
    return tensor if direction is None else tensor.flip(FLIP_AXES[direction])


def unpadded_box(meta: dict, height: int, width: int) -> Window:
    """(y1, y2, x1, x2) of the image inside its padded (height, width)
    input: mmseg's ``postprocess_result`` rule (``img_padding_size``, else
    ``padding_size`` = (left, right, top, bottom), cut off), then at most
    ``img_shape`` (the image's size before padding) from that corner."""
    padding = meta.get('img_padding_size', meta.get('padding_size'))
    left, right, top, bottom = (int(v) for v in (padding or (0, 0, 0, 0)))
    y2, x2 = height - bottom, width - right
    shape = meta.get('img_shape')
    if shape is not None:
        y2, x2 = min(y2, top + int(shape[0])), min(x2, left + int(shape[1]))
    if min(top, left) < 0 or y2 <= top or x2 <= left:
        raise OVSSDataError(
            f'image meta padding_size={padding}, img_shape={shape} leave no '
            f'pixel of the {height}x{width} input; padding_size is (left, '
            'right, top, bottom) as SegDataPreProcessor sets it')
    return top, y2, left, x2


def label_histogram(labels: Tensor, num_classes: int) -> Tensor:
    """(num_classes,) int64 pixel count of each label in ``labels``.

    ``torch.bincount`` on the CPU; elsewhere a ``scatter_add_`` into a
    fixed-size histogram (CUDA's ``bincount`` reads the largest label back
    to the host to size its output: a sync per call)."""
    labels = labels.flatten()
    if labels.device.type == 'cpu':
        return torch.bincount(labels, minlength=num_classes)
    counts = torch.zeros(num_classes, dtype=torch.long, device=labels.device)
    return counts.scatter_add_(
        0, labels, torch.ones((), dtype=torch.long,
                              device=labels.device).expand(labels.numel()))


def _pair(value, name) -> Tuple[int, int]:
    if value is None:
        raise OVSSConfigError(
            f"test_cfg.{name} is required with mode='slide': give a "
            'positive int or (h, w)')
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise OVSSConfigError(f'test_cfg.{name} must be a positive int or '
                              f'(h, w), got {value}')
    return value


def _budget_mb(value, name: str) -> Optional[float]:
    """A size in MiB from a config value; None means no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            math.isnan(value) or value < 0:
        raise OVSSConfigError(
            f'{name} must be a size in MiB >= 0 (or None: no limit), got '
            f'{value!r}')
    return float(value)


class SegLogitsStore:
    """What ``seg_logits`` holds for one image, filled band by band.

    Full-size (K, H, W) float32 scores when they take at most ``max_mb``
    MiB (None: always). Otherwise the scores of every s-th pixel of every
    s-th row, ``full[:, ::s, ::s]`` exactly, for the smallest stride s that
    fits (``seg_logits.metainfo``: ``stride`` and ``ori_shape``; upsample
    with nearest neighbours), with a warning; ``max_mb=0`` stores nothing.
    ``pred_sem_seg`` is always full size and computed from the full scores
    (``tools/test.py`` metrics read only it).
    ``renormalize`` divides the stored scores by their sum over classes
    (NACLIP's code, ``sinahmr/NACLIP`` naclip.py, stores its synonym-max
    probabilities so renormalised; labels do not change).

    A band that is the whole full-size result (one band per image, the
    usual case up to ``tile_mb``) is kept as it is rather than copied into
    a new (K, H, W) tensor: the caller hands it over and does not change it
    afterwards. A copy would write the whole scores once more into fresh
    pages (ADE-150 at 448 x 597: 160 MiB, about 5 % of a FreeCP-SCLIP image
    on a 2-core CPU).
    """

    def __init__(self, num_classes: int, shape: Tuple[int, int],
                 max_mb: Optional[float], renormalize: bool = False,
                 device=None):
        height, width = (int(v) for v in shape)
        self.shape, self.renormalize = (height, width), renormalize
        self.stride = 1
        if max_mb is not None:
            budget = max_mb * 2**20
            # max_mb=0: nothing; a budget under one pixel's scores still
            # keeps one pixel (and says so) rather than nothing silently
            self.stride = 0 if budget == 0 else next(
                (s for s in range(1, max(height, width) + 1)
                 if 4 * num_classes * -(-height // s) * -(-width // s)
                 <= budget), max(height, width))
        self.num_classes, self.max_mb = num_classes, max_mb
        self.device = device
        self._data: Optional[Tensor] = None

    @property
    def data(self) -> Optional[Tensor]:
        """The stored (K, ceil(H / s), ceil(W / s)) scores (None when
        nothing is stored), allocated on first use."""
        if self.stride and self._data is None:
            height, width = self.shape
            self._data = torch.empty(
                (self.num_classes, -(-height // self.stride),
                 -(-width // self.stride)), device=self.device)
        return self._data

    def _takes_whole(self, top: int, scores: Tensor) -> bool:
        """Whether ``scores`` from row ``top`` are the whole full-size
        result, in a tensor of their own that can be kept uncopied."""
        full = (self.num_classes, *self.shape)
        return (self.stride == 1 and not self.renormalize
                and self._data is None and top == 0
                and tuple(scores.shape) == full
                and scores.dtype == torch.float32
                and scores.is_contiguous()
                and scores.untyped_storage().nbytes()
                == scores.numel() * scores.element_size()
                and self._on_store_device(scores))

    def _on_store_device(self, scores: Tensor) -> bool:
        if self.device is None:
            return True
        device = torch.device(self.device)
        return scores.device.type == device.type and (
            device.index is None or scores.device.index == device.index)

    def reduction_note(self) -> Optional[str]:
        """Why and how the stored scores are subsampled (None if not)."""
        if self.stride <= 1:
            return None
        height, width = self.shape
        full = 4 * self.num_classes * height * width / 2**20
        return (f'seg_logits of {self.num_classes} classes at {height}x'
                f'{width} would take {full:.0f} MiB, over seg_logits.max_mb='
                f'{self.max_mb:g}: storing the scores of every '
                f'{self.stride}-th pixel (seg_logits.metainfo["stride"]); '
                'pred_sem_seg is full size. Raise model.seg_logits.max_mb '
                '(None: no limit) to store them all')

    def add(self, top: int, scores: Tensor) -> None:
        """Store the (K, rows, W) scores of output rows from ``top``; a
        band that is the whole result is kept, not copied."""
        if not self.stride:
            return
        if self._takes_whole(top, scores):
            self._data = scores
            return
        step = self.stride
        first = (-top) % step
        part = scores[:, first::step, ::step]
        if self.renormalize:
            total = part.sum(0, keepdim=True)
            part = part / total.clamp(min=torch.finfo(part.dtype).tiny)
        row = (top + first) // step
        self.data[:, row:row + part.shape[1]] = part

    def result(self) -> Optional[PixelData]:
        if self.data is None:
            return None
        if self.stride == 1:
            return PixelData(data=self.data)
        return PixelData(data=self.data, metainfo=dict(
            stride=self.stride, ori_shape=self.shape))


@MODELS.register_module()
class CLIPDenseSegmentor(EncoderDecoder):
    """Open-vocabulary segmentor over a frozen open_clip model.

    An mmseg ``EncoderDecoder`` whose backbone and text encoder are the
    CLIP towers (:meth:`_build_clip_towers`) and whose vocabulary is set at
    run time, so ``num_classes`` (the active vocabulary's classes) and
    ``out_channels`` (the head's window maps for that vocabulary,
    ``decode_head.num_output_maps``: one per query for the cosine head,
    i.e. per synonym) are properties; there is no neck and no auxiliary
    head. mmseg's methods keep their contracts:

    - ``encode_decode(inputs, metas)``: the (B, out_channels, H, W) window
      maps of whole inputs at input size (``decode_head.predict``);
    - ``slide_inference`` / ``whole_inference``: the tensors of mmseg's own
      (which call ``encode_decode`` window by window), with the windows
      batched (``window_batch_size``) and stitched as :class:`StitchedMaps`;
    - ``inference(inputs, metas)``: (B, K, H, W) class scores, the maps
      through ``decode_head.image_maps``, PAMR and ``class_scores`` (what
      ``postprocess_result`` argmaxes; no background rules);
    - ``predict``: mmseg's ``postprocess_result`` contract (padding removed,
      flips undone, labels and ``seg_logits`` at ``ori_shape``) on the
      memory-bounded banded path. Two differences, both on purpose: the
      padding is cut off before the windows are (a padded image gives the
      prediction of the image alone; mmseg runs the windows over the
      padding and crops after), and the head's maps are resized to
      ``ori_shape`` before ``class_scores`` (as the SCLIP code does; mmseg
      resizes the scores). With ``ori_shape`` equal to the unpadded input
      size and no background rule, the labels are the argmax of
      ``postprocess_result(inference(...))``.

    Args:
        clip (dict): the CLIP weights both towers load,
            :func:`~mmseg_ovss.clip.loading.build_clip_model` arguments
            (``model_name``, ``pretrained``, ``checkpoint``, ``precision``,
            ``random_init``, ``seed``); filled into ``backbone`` and
            ``text_encoder`` where they do not set a key.
        backbone (dict): the image tower, ``OpenCLIPViT`` by default:
            ``dense_strategy`` (e.g. ``dict(type='SCLIP')``), ``pos_interp``
            (how position embeddings are resized to a window: 'size',
            'size_antialias' as GEM's code, 'dino' as the SCLIP, NACLIP,
            ClearCLIP and ProxyCLIP code), ``freeze`` ('all'); see
            ``docs/clip_backbone.md``.
        text_encoder (dict): the text tower, ``OpenCLIPTextEncoder`` by
            default: ``templates`` ('openai', 'vild', 'single', a list or
            a file), ``freeze``; see ``docs/clip_text_encoder.md``.
        decode_head (dict): a registered ``DenseCLIPHead``.
        text (dict): the vocabulary: ``class_names`` (a class-name file; default: the dataset's metainfo classes set by
            ``DatasetVocabularyHook``), ``background_class`` (int, None or
            'auto': the class one of whose synonyms is "background", in any
            case or spacing, or whose dataset class is so named, e.g. a
            stuff-word line 0 with VOC21's metainfo; see
            ``clip.vocabulary.find_background_class``),
            ``background_names`` (replace the background class's words,
            e.g. ``['background']`` as ClearCLIP does, instead of the stuff
            words of the class-name file), ``shared_synonyms`` ('error',
            the default: a synonym on two lines is an error since the later
            class could never win; 'allow': read such a reference file as
            its authors do, with a warning).
        prob_thd (float): pixels whose top class score is below it become
            background (only with a background class; a vocabulary without
            one warns once that it is ignored).
        area_thd (float, optional): drop foreground classes predicted on
            less than this fraction of the foreground area (SCLIP VOC21).
        pamr (dict, optional): :class:`~mmseg_ovss.utils.pamr.PAMR` args.
            PAMR (and a head with ``pixelwise_scores = False``) scores the
            whole image at once: memory then grows with classes x pixels.
        window_batch_size (int): sliding windows encoded together.
        seg_logits (dict, optional): what ``seg_logits`` holds,
            :class:`SegLogitsStore`: ``max_mb`` (512; None: no limit; 0:
            nothing) and ``renormalize`` (False; True as NACLIP's code).
        tile_mb (float): MiB of one (classes, rows, width) float32 band of
            output rows scored at a time (256); peak memory is a few such
            bands plus the window maps on their patch grids and, for
            bilinear window maps, the column-resized sums of the window
            rows overlapping a band (:class:`~mmseg_ovss.clip.dense_head.
            SeparableStitch`: classes x grid rows x width each).
        test_cfg (dict): ``mode`` 'slide' (``crop_size``, ``stride``) or
            'whole'.
        strategy (dict, optional): the old place of
            ``backbone.dense_strategy`` (read with a warning, as are
            ``clip.pos_interp`` and the text tower's options in ``text``).
        precision (str): the dtype of the dense path (image tower, dense
            strategy, captured attention, FreeCP's crops): ``'fp32'``
            (exact; default), ``'bf16'`` (CPUs with AVX512-BF16 or AMX,
            GPUs), ``'fp16'`` (CUDA only) or ``'auto'``, see
            :mod:`mmseg_ovss.clip.precision`. A low precision runs on a cast
            copy of the tower's weights; the features come back in fp32,
            the text embeddings and the head stay fp32. The kernels are
            logged at the first forward on each device. (``clip.precision``
            is something else: the dtype the weights are loaded in.)
        gt_vocabulary (bool): the ground-truth vocabulary oracle, for
            analysis only (FreeCP Fig. 1b, Table 1 "w/ GT"; warns when
            built): :meth:`predict` segments each image with the vocabulary
            restricted to the classes of its ``gt_sem_seg`` (the background
            class always kept), see
            :mod:`~mmseg_ovss.freecp.gt_vocabulary`. Labels and
            ``seg_logits`` keep the full vocabulary's indices (the other
            classes score 0). False (default): the full vocabulary.
    """

    def __init__(self,
                 clip: Optional[dict] = None,
                 backbone: Optional[dict] = None,
                 text_encoder: Optional[dict] = None,
                 decode_head: Optional[dict] = None,
                 text: Optional[dict] = None,
                 prob_thd: float = 0.0,
                 area_thd: Optional[float] = None,
                 pamr: Optional[dict] = None,
                 window_batch_size: int = 16,
                 seg_logits: Optional[dict] = None,
                 tile_mb: float = 256.0,
                 data_preprocessor: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 strategy: Union[dict, str, None] = None,
                 gt_vocabulary: bool = False,
                 precision: str = 'fp32'):
        # BaseSegmentor's init: the towers are built with the shared clip
        # weights (_build_clip_towers) and num_classes / out_channels follow
        # the run-time vocabulary, so EncoderDecoder's init does not apply
        BaseSegmentor.__init__(self, data_preprocessor=data_preprocessor,
                               init_cfg=init_cfg)
        text = dict(text or {})
        self.class_names_file = text.pop('class_names', None)
        self.background_class = text.pop('background_class', 'auto')
        self.background_names = text.pop('background_names', None)
        self.shared_synonyms = text.pop('shared_synonyms', 'error')
        self._build_clip_towers(clip, backbone, text_encoder, strategy, text)
        head = MODELS.build(decode_head or dict(type='CosineSimilarityHead'))
        if not isinstance(head, DenseCLIPHead):
            raise OVSSConfigError(
                f'decode_head {type(head).__name__} is not a DenseCLIPHead; '
                'see mmseg_ovss/clip/dense_head.py for the head interface')
        if head.align_corners:
            raise OVSSConfigError(
                f'decode_head {type(head).__name__} has align_corners=True; '
                'the banded resize to the original size (and mmseg\'s '
                'postprocess_result here) use align_corners=False: set it '
                'False')
        self.decode_head = head
        self.align_corners = head.align_corners
        self.neck = None
        self.auxiliary_head = None
        self.prob_thd = float(prob_thd)
        self.area_thd = area_thd
        self.pamr = PAMR(**pamr) if pamr else None
        self.window_batch_size = max(1, int(window_batch_size))
        logits_cfg = options_with_defaults(
            seg_logits, dict(max_mb=512.0, renormalize=False), 'seg_logits')
        self.seg_logits_max_mb = _budget_mb(logits_cfg['max_mb'],
                                            'seg_logits.max_mb')
        self.seg_logits_renormalize = bool(logits_cfg['renormalize'])
        self.tile_mb = _budget_mb(tile_mb, 'tile_mb')
        if not self.tile_mb:
            raise OVSSConfigError(
                f'tile_mb must be a positive size in MiB, got {tile_mb!r}')
        self.train_cfg = train_cfg
        self.test_cfg = ConfigDict(test_cfg or dict(mode='whole'))
        self.test_cfg.setdefault('mode', 'whole')
        if self.test_cfg.mode not in ('slide', 'whole'):
            raise OVSSConfigError(
                f"test_cfg.mode must be 'slide' or 'whole', got "
                f"{self.test_cfg.mode!r}")
        if self.test_cfg.mode == 'slide':  # pairs, as mmseg's code reads
            for name in ('crop_size', 'stride'):
                self.test_cfg[name] = _pair(self.test_cfg.get(name), name)
        self.dataset_classes: Optional[Sequence[str]] = None
        if not isinstance(gt_vocabulary, bool):
            raise OVSSConfigError(
                f'gt_vocabulary must be True or False, got {gt_vocabulary!r}')
        self.gt_vocabulary = gt_vocabulary
        if gt_vocabulary:
            warnings.warn(ORACLE_WARNING)
        self.precision = check_precision(precision)
        self._precision_logged = set()
        self._attention_layers = resolve_layer_indices(
            getattr(head, 'required_attention_layers', ()),
            self.backbone.num_layers)

    def _build_clip_towers(self, clip: Optional[dict], backbone: Optional[dict],
                           text_encoder: Optional[dict], strategy=None,
                           text: Optional[dict] = None) -> None:
        """Build ``backbone`` (:class:`~mmseg_ovss.models.backbones.
        OpenCLIPViT`) and ``text_encoder`` (:class:`~mmseg_ovss.models.
        text_encoders.OpenCLIPTextEncoder`) from their configs, each filled
        with the ``clip`` weights block where it does not set a key (as
        mmseg's ``pretrained=`` fills the backbone's). Each tower keeps its
        own half of the CLIP model, so the weights exist once.

        The keys of configs written before the towers were registered are
        still read, with a warning: ``strategy`` (now
        ``backbone.dense_strategy``), ``clip.pos_interp`` (now
        ``backbone.pos_interp``) and the text tower's options in ``text``
        (now ``text_encoder``: ``templates``, ``batch_size``,
        ``cache_size``, ``truncate_context``)."""
        clip = dict(clip or {})
        backbone = dict(backbone or {})
        text_encoder = dict(text_encoder or {})
        backbone.setdefault('type', 'OpenCLIPViT')
        text_encoder.setdefault('type', 'OpenCLIPTextEncoder')
        legacy = []
        if 'pos_interp' in clip:
            backbone['pos_interp'] = clip.pop('pos_interp')
            legacy.append('clip.pos_interp -> backbone.pos_interp')
        if strategy is not None:
            current = backbone.get('dense_strategy')
            if isinstance(strategy, dict) and 'type' not in strategy and \
                    isinstance(current, dict):
                strategy = {**current, **strategy}
            backbone['dense_strategy'] = strategy
            legacy.append('strategy -> backbone.dense_strategy')
        for key in TEXT_TOWER_KEYS:
            if key in (text or {}):
                text_encoder[key] = text.pop(key)
                legacy.append(f'text.{key} -> text_encoder.{key}')
        if text:
            raise OVSSConfigError(
                f'unknown text option(s) {sorted(text)}; text takes '
                "class_names, background_class, background_names and "
                "shared_synonyms (the text tower's options go in "
                'text_encoder=dict(...))')
        if legacy:
            warnings.warn(
                f'{type(self).__name__}: config keys of the old layout were '
                f'moved ({"; ".join(legacy)}); write them there (see '
                'configs/_base_/models/clip_dense.py)', DeprecationWarning)
        for key, value in clip.items():
            backbone.setdefault(key, value)
            text_encoder.setdefault(key, value)
        self.backbone = MODELS.build(backbone)
        self.text_encoder = MODELS.build(text_encoder)
        for tower, needs in ((self.backbone, ('forward_dense', 'encode_cls',
                                              'patch_size', 'num_layers')),
                             (self.text_encoder, ('embed_vocabulary',
                                                  'logit_scale'))):
            missing = [name for name in needs if not hasattr(tower, name)]
            if missing:
                raise OVSSConfigError(
                    f'{type(tower).__name__} lacks {missing}: '
                    f'{type(self).__name__} needs an open_clip tower '
                    "(backbone type='OpenCLIPViT', text_encoder "
                    "type='OpenCLIPTextEncoder') or one with their API")

    @property
    def num_classes(self) -> int:
        """Classes of the active vocabulary."""
        return self.vocabulary().num_classes

    @property
    def out_channels(self) -> int:
        """Channels of :meth:`encode_decode`'s maps for the active
        vocabulary (``decode_head.num_output_maps``)."""
        return self.decode_head.num_output_maps(self.vocabulary_embeddings())

    # ------------------------------------------------------------------ text
    def set_vocabulary(self, classes: Optional[Sequence] = None,
                       class_names_file: Optional[str] = None,
                       background_class='auto') -> None:
        """Use another vocabulary: a list of classes (each 'a, b' or a list
        of synonyms) or a class-name file; ``background_class`` as in
        ``text``."""
        self.dataset_classes = None if classes is None else list(classes)
        self.class_names_file = class_names_file
        self.background_class = background_class

    def set_dataset_classes(self, classes: Sequence[str]) -> None:
        """Called by ``DatasetVocabularyHook`` with the dataset's classes."""
        self.dataset_classes = list(classes)

    def _background_index(self, names: Sequence[Sequence[str]]):
        if self.background_class != 'auto':
            return self.background_class
        return find_background_class(names, self.dataset_classes)

    def vocabulary(self) -> Vocabulary:
        """The active vocabulary (parsed once per setting)."""
        key = (tuple(self.dataset_classes or ()), self.class_names_file,
               self.background_class, tuple(self.background_names or ()),
               self.shared_synonyms)
        if getattr(self, '_vocabulary_key', None) == key:
            return self._vocabulary
        parsed = vocabulary_from(self.dataset_classes, self.class_names_file,
                                 shared_synonyms=self.shared_synonyms)
        background = self._background_index(parsed.synonyms)
        synonyms = parsed.synonyms
        if self.background_names and background is not None:
            synonyms = list(synonyms)
            synonyms[background] = tuple(self.background_names)
            synonyms = tuple(synonyms)
        if synonyms == parsed.synonyms:
            # the same names: checked (and warned about) once already
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', UserWarning)
                vocab = dataclasses.replace(parsed,
                                            background_class=background)
        else:  # the background's words replaced: check the final names
            vocab = dataclasses.replace(parsed, synonyms=synonyms,
                                        background_class=background)
        if (self.class_names_file and self.dataset_classes is not None
                and len(self.dataset_classes) != vocab.num_classes):
            raise OVSSConfigError(
                f'class-name file {self.class_names_file} has '
                f'{vocab.num_classes} classes but the dataset has '
                f'{len(self.dataset_classes)}; use the file made for '
                'this dataset or drop text.class_names')
        self._vocabulary_key, self._vocabulary = key, vocab
        return vocab

    def _warn_background_rules_unused(self, vocab: Vocabulary) -> None:
        """Say, once per vocabulary, that the background settings do
        nothing when it has no background class (checked when predicting:
        the dataset's classes, which can name the background, are set by
        then)."""
        if vocab.background_class is not None or getattr(
                self, '_background_checked', None) == self._vocabulary_key:
            return
        self._background_checked = self._vocabulary_key
        unused = []
        if self.background_names:
            unused.append(f'text.background_names='
                          f'{list(self.background_names)!r}')
        if self.prob_thd > 0:
            unused.append(f'prob_thd={self.prob_thd}')
        if unused:
            warnings.warn(
                f'{" and ".join(unused)} ignored: the vocabulary has no '
                "background class (no class is named 'background' and "
                'text.background_class is not an index); name one class '
                "'background' or set text.background_class to its index",
                UserWarning, stacklevel=3)

    def vocabulary_embeddings(self) -> VocabularyEmbeddings:
        """Embeddings of the active vocabulary (cached by the encoder)."""
        vocab = self.vocabulary()
        self._warn_background_rules_unused(vocab)
        with profile_stage('text'):
            return self.text_encoder.embed_vocabulary(vocab)

    # ----------------------------------------------------------- inference
    def _pad_to_patches(self, images: Tensor) -> Tensor:
        """Zero-pad (B, 3, H, W) images bottom/right to whole patches."""
        patch = self.backbone.patch_size
        pad_h, pad_w = -images.shape[-2] % patch, -images.shape[-1] % patch
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        return images

    def _encode_windows(self, windows: Tensor, vocab: VocabularyEmbeddings
                        ) -> Tuple[Tensor, Tuple[int, int]]:
        """Head maps (n, C, h, w) of n windows on their patch grid, and the
        pixel size they cover.

        Windows are zero-padded bottom/right to a multiple of the patch (the
        maps are resized to the padded size and cropped back when stitched;
        NACLIP's own whole-image code drops the remainder pixels instead).
        ``window_batch_size`` windows are encoded together."""
        windows = self._pad_to_patches(windows)
        grids = []
        for chunk in windows.split(self.window_batch_size):
            with profile_stage('backbone'):
                feats = self._backbone_features(chunk)
            with profile_stage('head'):
                grids.append(self.decode_head(feats, vocab).float())
        return torch.cat(grids), tuple(windows.shape[-2:])

    def compute_dtype(self, device) -> torch.dtype:
        """The dtype of the dense path on ``device`` (``precision``); the
        choice and the device's kernels are logged once per device. On the
        CPU, glibc keeps freed memory from then on
        (:func:`mmseg_ovss.utils.cpu_allocator.keep_freed_memory`)."""
        dtype = compute_dtype(self.precision, device)
        key = str(device)
        if key not in self._precision_logged:
            self._precision_logged.add(key)
            allocator = ''
            if torch.device(device).type == 'cpu':
                allocator = f'; freed memory: {keep_freed_memory()}'
            print_log(
                f'{type(self).__name__}: precision={self.precision!r} runs '
                f'the dense path in {dtype_name(dtype)} on {key} '
                f'({kernel_report(device).summary()}{allocator})',
                logger='current')
        return dtype

    def dense_backbone(self, device):
        """The backbone the dense path runs on ``device``: the backbone
        itself at its own dtype, else its cast copy (``precision``)."""
        dtype = self.compute_dtype(device)
        if dtype == self.backbone.dtype:
            return self.backbone
        return self.backbone.cast_copy(dtype, device)

    def _backbone_features(self, images: Tensor):
        """Dense features of (B, 3, H, W) images: the one call of the
        backbone's dense forward, at ``precision``."""
        head = self.decode_head
        features = self.dense_backbone(images.device).forward_dense(
            images, attention_layers=self._attention_layers,
            with_cls=head.requires_cls_token,
            attention_heads=head.attention_heads)
        # CLIP's temperature lives with the text tower (FreeCP's Eq. 1)
        features.logit_scale = self.text_encoder.logit_scale
        return features

    def _windows(self, height: int, width: int, mode: str) -> List[Window]:
        if mode == 'whole':
            return [(0, height, 0, width)]
        crop = _pair(self.test_cfg.get('crop_size'), 'crop_size')
        stride = _pair(self.test_cfg.get('stride'), 'stride')
        return slide_windows(height, width, crop, stride)

    def stitched_batch(self, inputs: Tensor, vocab: VocabularyEmbeddings,
                       mode: Optional[str] = None) -> List[StitchedMaps]:
        """The window maps of each (B, 3, H, W) input image and where they
        sit: mmseg's slide grid (``mode='slide'``) or one window per image
        (``'whole'``); default: ``test_cfg.mode``. The windows of all
        images are encoded together, ``window_batch_size`` at a time."""
        mode = mode or self.test_cfg.get('mode', 'whole')
        batch, (height, width) = inputs.shape[0], inputs.shape[-2:]
        windows = self._windows(height, width, mode)
        if len(windows) == 1:
            crops = inputs
        else:  # window-major: crop j of image b is row j * B + b
            crops = torch.cat([inputs[..., y1:y2, x1:x2]
                               for y1, y2, x1, x2 in windows])
        grids, size = self._encode_windows(crops, vocab)
        return [StitchedMaps(grids[index::batch], windows, (height, width),
                             size, self.decode_head.window_resize_mode)
                for index in range(batch)]

    def stitched(self, image: Tensor,
                 vocab: VocabularyEmbeddings) -> StitchedMaps:
        """The window maps of one (1, 3, H, W) image and where they sit
        (mmseg's slide grid, or one window in ``'whole'`` mode)."""
        return self.stitched_batch(image, vocab)[0]

    def inference_stitched(self, image: Tensor,
                           vocab: VocabularyEmbeddings) -> StitchedMaps:
        """:meth:`stitched` passed through ``decode_head.image_maps``."""
        maps = self.stitched(image, vocab)
        with profile_stage('head'):
            maps = self.decode_head.image_maps(
                maps, image, vocab,
                self.dense_backbone(image.device).encode_cls,
                self.backbone.patch_size)
        if isinstance(maps, Tensor):
            maps = StitchedMaps.from_tensor(maps)
        return maps

    def inference_maps(self, image: Tensor,
                       vocab: VocabularyEmbeddings) -> Tensor:
        """Head maps (1, C, H, W) of one normalised image at full size: the
        stitched window maps passed through ``decode_head.image_maps``."""
        return self.inference_stitched(image, vocab).render()

    def class_scores(self, image: Tensor, vocab: VocabularyEmbeddings,
                     out_shape: Tuple[int, int]) -> Tensor:
        """(K, H, W) class scores of one image at ``out_shape``, computed
        on the whole image at once."""
        return self._whole_scores(self.inference_maps(image, vocab), image,
                                  vocab, out_shape)

    def _whole_scores(self, maps: Tensor, image: Tensor,
                      vocab: VocabularyEmbeddings,
                      out_shape: Tuple[int, int]) -> Tensor:
        with profile_stage('postprocess'):
            if tuple(maps.shape[-2:]) != tuple(out_shape):
                # at the same size the bilinear weights are 1 and 0: skip
                # the (C, H, W) copy it would make
                maps = F.interpolate(maps, size=tuple(out_shape),
                                     mode='bilinear', align_corners=False)
            if self.pamr is not None:
                maps = self.pamr(image, maps)
        with profile_stage('head'):
            scores = self.decode_head.class_scores(maps, vocab)
        return scores[0]

    def _score_bands(self, maps: StitchedMaps, image: Tensor,
                     vocab: VocabularyEmbeddings,
                     out_shape: Tuple[int, int]) -> Callable[[], Iterable]:
        """A function yielding ``(first_row, (K, rows, W) scores)`` over the
        output rows of one image.

        Without PAMR and with a head whose scores are per pixel, the rows
        come in bands of at most ``tile_mb`` per class-map tensor: each band
        is rendered from the window grids, resized to ``out_shape`` (the
        source rows it reads only, same weights as ``F.interpolate``) and
        scored, so memory per class does not grow with the image. Else the
        whole image is scored at once (:meth:`class_scores`).
        """
        out_h, out_w = (int(v) for v in out_shape)
        in_h, in_w = maps.image_size
        channels = max(maps.channels, vocab.num_classes)
        step = band_height(channels, max(in_w, out_w), self.tile_mb * 2**20)
        tiled = self.pamr is None and self.decode_head.pixelwise_scores
        if not tiled or step >= max(in_h, out_h):
            scores = [(0, self._whole_scores(maps.render(), image, vocab,
                                             (out_h, out_w)))]
            return lambda: scores
        # source rows on the host (band limits are Python ints, no device
        # read-back) and the gather indices and weights on the device once
        i0, i1, w0, w1 = linear_source(in_h, out_h)
        starts, stops = i0.tolist(), i1.tolist()
        device = image.device
        rows = (starts, stops, *(t.to(device) for t in (i0, i1, w0, w1)))
        tops = list(range(0, out_h, step))
        patch = self.backbone.patch_size
        if (in_h, in_w) == (out_h, out_w) and step >= patch:
            # cut at patch centres: a band of k patches then reads k + 1
            # rows of each window's grid (k + 2 when cut at patch borders)
            step -= step % patch
            tops = [0] + list(range(patch // 2 + step, out_h, step))
        ends = tops[1:] + [out_h]

        def bands():
            for top, bottom in zip(tops, ends):
                with profile_stage('postprocess'):
                    band = self._resized_band(maps, rows, top, bottom,
                                              out_w)
                with profile_stage('head'):
                    yield top, self.decode_head.class_scores(band, vocab)[0]
        return bands

    @staticmethod
    def _resized_band(maps: StitchedMaps, rows, top: int, bottom: int,
                      out_w: int) -> Tensor:
        """Output rows [top, bottom) of the stitched maps resized
        (bilinear) to ``len(rows[0])`` x ``out_w``; ``rows``: the source
        rows of each output row as host lists (``i0``, ``i1``) and as
        device tensors with their weights (``i0``, ``i1``, ``w0``, ``w1``,
        :func:`linear_source`)."""
        starts, stops = rows[0], rows[1]
        if maps.image_size == (len(starts), out_w):
            return maps.rows(top, bottom)
        i0, i1, w0, w1 = (t[top:bottom] for t in rows[2:])
        first, last = starts[top], stops[bottom - 1] + 1
        band = maps.rows(first, last)
        # columns first (rows pass through unchanged at scale 1), then rows
        band = F.interpolate(band, size=(last - first, out_w),
                             mode='bilinear', align_corners=False)
        upper = band.index_select(2, i0 - first)
        lower = band.index_select(2, i1 - first)
        return upper * w0.view(1, 1, -1, 1) + lower * w1.view(1, 1, -1, 1)

    def _area_keep(self, area: Tensor,
                   vocab: VocabularyEmbeddings) -> Tensor:
        """SCLIP's area rule (``wangf3014/SCLIP`` clip_segmentor.py): keep
        a foreground class predicted on more than ``area_thd`` x the
        foreground area; (K,) bool."""
        foreground = torch.ones_like(area, dtype=torch.bool)
        if vocab.background_class is not None:
            foreground[vocab.background_class] = False
        # a masked sum, not area[foreground]: boolean indexing syncs on GPU
        total = torch.where(foreground, area, area.new_zeros(())).sum()
        keep = area > self.area_thd * total
        return keep | ~foreground

    def threshold_labels(self, scores: Tensor, vocab) -> Tensor:
        """Argmax of (K, h, w) scores, ``prob_thd`` -> background (``vocab``:
        anything with a ``background_class``)."""
        max_score, labels = scores.max(0)
        background = vocab.background_class
        if background is not None and self.prob_thd > 0:
            # masked_fill_: no boolean indexing (a host sync on GPU)
            labels.masked_fill_(max_score < self.prob_thd, background)
        return labels

    def predict_labels(self, scores: Tensor,
                       vocab: VocabularyEmbeddings) -> Tensor:
        """Background rules and argmax: (K, H, W) -> (1, H, W) labels."""
        if self.area_thd is not None and scores.shape[0] > 1:
            area = label_histogram(scores.argmax(0),
                                   scores.shape[0]).float()
            keep = self._area_keep(area, vocab)
            scores = scores * keep.to(scores.dtype).view(-1, 1, 1)
        return self.threshold_labels(scores, vocab)[None]

    def segment(self, image: Tensor, vocab: VocabularyEmbeddings,
                out_shape: Tuple[int, int], flip: Optional[str] = None
                ) -> Tuple[Tensor, Optional[PixelData]]:
        """Labels (1, H, W) of one image at ``out_shape`` and the
        ``seg_logits`` to store (None when ``seg_logits.max_mb=0``).

        The stored scores are the class scores after the area rule (SCLIP's
        code zeroes the dropped classes in what it stores) and before
        ``prob_thd`` (which changes labels only, in every reference), see
        :class:`SegLogitsStore` for their size. ``flip`` (a
        ``flip_direction``) is undone on each band of labels and scores.
        """
        maps = self.inference_stitched(image, vocab)
        bands = self._score_bands(maps, image, vocab, out_shape)
        num_classes = vocab.num_classes
        keep = None
        scored = bands
        if self.area_thd is not None and num_classes > 1:
            area = torch.zeros(num_classes, dtype=torch.long,
                               device=image.device)
            # the area pass's bands are kept for the label pass while they
            # fit one tile (an image of one band is scored once)
            kept, room = [], self.tile_mb * 2**20 / 4
            for top, scores in bands():
                with profile_stage('postprocess'):
                    area += label_histogram(scores.argmax(0), num_classes)
                if kept is not None:
                    room -= scores.numel()
                    if room < 0:
                        kept = None
                    else:
                        kept.append((top, scores))
            keep = self._area_keep(area.float(), vocab)
            if kept is not None:
                scored = lambda: kept  # noqa: E731
        height = int(out_shape[0])
        flip_rows = flip in ('vertical', 'diagonal')
        labels = torch.empty(tuple(out_shape), dtype=torch.long,
                             device=image.device)
        store = SegLogitsStore(num_classes, out_shape, self.seg_logits_max_mb,
                               self.seg_logits_renormalize, image.device)
        for top, scores in scored():
            with profile_stage('postprocess'):
                if keep is not None:
                    scores = scores * keep.to(scores.dtype).view(-1, 1, 1)
                if flip is not None:  # the band's rows land mirrored
                    scores = flip_back(scores, flip)
                    if flip_rows:
                        top = height - top - scores.shape[1]
                labels[top:top + scores.shape[1]] = self.threshold_labels(
                    scores, vocab)
                store.add(top, scores)
        note = store.reduction_note()
        if note and not getattr(self, '_logits_note_shown', False):
            warnings.warn(note + ' (shown once)')
            self._logits_note_shown = True
        return labels[None], store.result()

    def predict(self, inputs: Tensor,
                data_samples: OptSampleList = None) -> SampleList:
        """Labels and ``seg_logits`` of each image at its ``ori_shape``
        (mmseg's ``postprocess_result`` contract): the padding
        (``padding_size``, :func:`unpadded_box`) is cut off first, the flip
        of the meta (``flip``, ``flip_direction``) undone on the results."""
        self._check_rgb(inputs)
        metas = self._metas(inputs, data_samples)
        vocab = self.vocabulary_embeddings()
        if data_samples is None:
            from mmseg.structures import SegDataSample
            data_samples = [SegDataSample() for _ in metas]
        for index, meta in enumerate(metas):
            y1, y2, x1, x2 = unpadded_box(meta, *inputs.shape[-2:])
            image = inputs[index:index + 1, :, y1:y2, x1:x2]
            image_vocab, kept = vocab, None
            if self.gt_vocabulary:
                kept = annotated_classes(data_samples[index], vocab)
                if kept is not None:
                    image_vocab = restrict_vocabulary(vocab, kept)
            with torch.no_grad():
                labels, logits = self.segment(image, image_vocab,
                                              self._ori_shape(meta),
                                              flip_direction(meta))
            if kept is not None:
                labels, logits = self._to_full_vocabulary(
                    labels, logits, kept, vocab.num_classes)
            fields = {'pred_sem_seg': PixelData(data=labels)}
            if logits is not None:
                fields['seg_logits'] = logits
            data_samples[index].set_data(fields)
        return data_samples

    @staticmethod
    def _to_full_vocabulary(labels: Tensor, logits: Optional[PixelData],
                            kept: Tensor, num_classes: int
                            ) -> Tuple[Tensor, Optional[PixelData]]:
        """Labels and ``seg_logits`` of a restricted vocabulary (classes
        ``kept``) in the full vocabulary's indices; the classes left out
        score 0."""
        kept = kept.to(labels.device)
        labels = kept[labels]
        if logits is None:
            return labels, None
        data = logits.data
        full = data.new_zeros((num_classes, *data.shape[1:]))
        full[kept.to(data.device)] = data
        return labels, PixelData(data=full, metainfo=logits.metainfo)

    @staticmethod
    def _check_rgb(inputs: Tensor) -> None:
        if inputs.dim() != 4 or inputs.shape[1] != 3:
            raise OVSSDataError(
                f'expected a (B, 3, H, W) batch of RGB images, got '
                f'{tuple(inputs.shape)}; load images as 3-channel colour '
                "(LoadImageFromFile's default color_type='color' converts "
                'grayscale and RGBA)')

    @staticmethod
    def _ori_shape(meta: dict) -> Tuple[int, int]:
        if 'ori_shape' not in meta:
            raise OVSSDataError(
                f'image meta without ori_shape (keys: {sorted(meta)}): the '
                "predictions are resized to it; PackSegInputs' default "
                'meta_keys include it')
        return tuple(int(v) for v in meta['ori_shape'][:2])

    @staticmethod
    def _metas(inputs: Tensor, data_samples: OptSampleList) -> List[Dict]:
        if data_samples is not None:
            return [sample.metainfo for sample in data_samples]
        shape = tuple(inputs.shape[-2:])
        return [dict(ori_shape=shape, img_shape=shape, pad_shape=shape,
                     padding_size=[0, 0, 0, 0])] * inputs.shape[0]

    # ------------------------------------------------ EncoderDecoder API
    def extract_feat(self, inputs: Tensor):
        """Dense CLIP features of whole (B, 3, H, W) inputs."""
        return self._backbone_features(inputs)

    def encode_decode(self, inputs: Tensor,
                      batch_img_metas: List[dict]) -> Tensor:
        """(B, out_channels, H, W) window maps of whole inputs at input size
        (mmseg's contract): the features of the inputs zero-padded to whole
        patches, through ``decode_head.predict`` (resized to the padded
        pixels, cropped to the size of mmseg's ``predict_by_feat`` rule)."""
        vocab = self.vocabulary_embeddings()
        features = self.extract_feat(self._pad_to_patches(inputs))
        return self.decode_head.predict((features, vocab), batch_img_metas,
                                        self.test_cfg)

    def slide_inference(self, inputs: Tensor,
                        batch_img_metas: List[dict]) -> Tensor:
        """mmseg's sliding-window inference with the windows of all images
        batched: the tensor ``EncoderDecoder.slide_inference`` computes by
        calling :meth:`encode_decode` window by window (overlaps averaged),
        up to the summation order of batched windows."""
        vocab = self.vocabulary_embeddings()
        return torch.cat([maps.render() for maps in
                          self.stitched_batch(inputs, vocab, 'slide')])

    def whole_inference(self, inputs: Tensor,
                        batch_img_metas: List[dict]) -> Tensor:
        """:meth:`encode_decode` of the inputs, ``window_batch_size``
        images at a time (mmseg's ``whole_inference``)."""
        vocab = self.vocabulary_embeddings()
        return torch.cat([maps.render() for maps in
                          self.stitched_batch(inputs, vocab, 'whole')])

    def inference(self, inputs: Tensor,
                  batch_img_metas: List[dict]) -> Tensor:
        """(B, K, H, W) class scores at input size, what mmseg's
        ``postprocess_result`` argmaxes: the slide or whole window maps of
        each image through ``decode_head.image_maps``, PAMR (at input
        size) and ``decode_head.class_scores``. The background rules
        (``prob_thd``, ``area_thd``) are :meth:`predict`'s."""
        self._check_rgb(inputs)
        mode = self.test_cfg.get('mode', 'whole')
        if mode == 'slide':
            maps = self.slide_inference(inputs, batch_img_metas)
        else:
            maps = self.whole_inference(inputs, batch_img_metas)
        vocab = self.vocabulary_embeddings()
        head, scores = self.decode_head, []
        for index in range(inputs.shape[0]):
            image = inputs[index:index + 1]
            image_maps = head.image_maps(
                maps[index:index + 1], image, vocab,
                self.dense_backbone(image.device).encode_cls,
                self.backbone.patch_size)
            if isinstance(image_maps, StitchedMaps):
                image_maps = image_maps.render()
            if self.pamr is not None:
                image_maps = self.pamr(image, image_maps)
            scores.append(head.class_scores(image_maps, vocab))
        return torch.cat(scores)

    def _forward(self, inputs: Tensor, data_samples: OptSampleList = None):
        """mmseg's tensor mode: the head's window maps (B, out_channels, h,
        w) on the patch grid of the inputs (padded to whole patches)."""
        features = self.extract_feat(self._pad_to_patches(inputs))
        return self.decode_head(features, self.vocabulary_embeddings())

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        raise NotImplementedError(
            f'{type(self).__name__} is training-free: run tools/test.py '
            '(no checkpoint needed), not tools/train.py')
