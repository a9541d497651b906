"""Training-free dense-CLIP segmentor (MaskCLIP, SCLIP, ClearCLIP, GEM, ...).

backbone = open_clip ViT with a dense strategy (``strategy``), text encoder =
prompt-ensembled class queries, decode head = any
:class:`~mmseg_ovss.clip.dense_head.DenseCLIPHead` (cosine head, FreeCP).
Inference follows mmseg's ``test_cfg`` (``mode='slide'`` with ``crop_size``
and ``stride``, or ``'whole'``) with all windows of an image batched; the
window maps are averaged where windows overlap, passed once per image through
the head's ``image_maps`` hook (identity except for FreeCP's per-image
purification), resized to the original image, optionally refined by PAMR,
turned into class scores by the head and post-processed with the background
rules of FACTS §1 (``area_thd``, ``prob_thd``).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.utils import OptSampleList, SampleList
from torch import Tensor

from mmseg_ovss.clip.dense_head import DenseCLIPHead, resolve_layer_indices
from mmseg_ovss.clip.features import VocabularyEmbeddings
from mmseg_ovss.clip.loading import build_clip_model
from mmseg_ovss.clip.strategies import build_dense_strategy
from mmseg_ovss.clip.text_encoder import (CLIPTextEncoder, build_tokenizer,
                                          vocabulary_from)
from mmseg_ovss.clip.vision_encoder import DenseCLIPVisionEncoder
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError
from mmseg_ovss.utils.pamr import PAMR
from mmseg_ovss.utils.profiler import profile_stage

Window = Tuple[int, int, int, int]


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


def _pair(value, name) -> Tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise OVSSConfigError(f'test_cfg.{name} must be a positive int or '
                              f'(h, w), got {value}')
    return value


@MODELS.register_module()
class CLIPDenseSegmentor(BaseSegmentor):
    """Open-vocabulary segmentor over a frozen open_clip model.

    Args:
        clip (dict): :func:`~mmseg_ovss.clip.loading.build_clip_model`
            arguments (``model_name``, ``pretrained``, ``checkpoint``,
            ``precision``, ``random_init``) and ``pos_interp``, how the
            position embeddings are resized to a window ('size',
            'size_antialias' as GEM's code, 'dino' as the SCLIP, NACLIP,
            ClearCLIP and ProxyCLIP code; see
            ``vision_encoder.interpolate_position_embedding``).
        strategy (dict): dense strategy, e.g. ``dict(type='SCLIP')``.
        decode_head (dict): a registered ``DenseCLIPHead``.
        text (dict): ``templates`` ('openai' ...), ``class_names`` (a
            class-name file; default: the dataset's metainfo classes set by
            ``DatasetVocabularyHook``), ``background_class`` (int, None or
            'auto': class 0 when the dataset's or vocabulary's class 0 is
            named "background"), ``background_names`` (replace the
            background class's words, e.g. ``['background']`` as ClearCLIP
            does, instead of the stuff words of the class-name file).
        prob_thd (float): pixels whose top class score is below it become
            background (only with a background class).
        area_thd (float, optional): drop foreground classes predicted on
            less than this fraction of the foreground area (SCLIP VOC21).
        pamr (dict, optional): :class:`~mmseg_ovss.utils.pamr.PAMR` args.
        window_batch_size (int): sliding windows encoded together.
        test_cfg (dict): ``mode`` 'slide' (``crop_size``, ``stride``) or
            'whole'.
    """

    def __init__(self,
                 clip: dict,
                 strategy: Union[dict, str] = 'Vanilla',
                 decode_head: Optional[dict] = None,
                 text: Optional[dict] = None,
                 prob_thd: float = 0.0,
                 area_thd: Optional[float] = None,
                 pamr: Optional[dict] = None,
                 window_batch_size: int = 16,
                 data_preprocessor: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        clip = dict(clip)
        pos_interp = clip.pop('pos_interp', 'size')
        self.clip_cfg = clip
        self.clip_model = build_clip_model(**clip)
        self.backbone = DenseCLIPVisionEncoder(self.clip_model.visual,
                                               build_dense_strategy(strategy),
                                               pos_interp=pos_interp)
        head = MODELS.build(decode_head or dict(type='CosineSimilarityHead'))
        if not isinstance(head, DenseCLIPHead):
            raise OVSSConfigError(
                f'decode_head {type(head).__name__} is not a DenseCLIPHead; '
                'see mmseg_ovss/clip/dense_head.py for the head interface')
        self.decode_head = head
        text = dict(text or {})
        self.class_names_file = text.pop('class_names', None)
        self.background_class = text.pop('background_class', 'auto')
        self.background_names = text.pop('background_names', None)
        model_key = '|'.join(str(clip.get(k)) for k in (
            'model_name', 'pretrained', 'checkpoint', 'random_init',
            'precision'))
        self.text_encoder = CLIPTextEncoder(
            self.clip_model, build_tokenizer(clip.get('model_name',
                                                      'ViT-B-16')),
            model_key=model_key, **text)
        self.prob_thd = float(prob_thd)
        self.area_thd = area_thd
        self.pamr = PAMR(**pamr) if pamr else None
        self.window_batch_size = max(1, int(window_batch_size))
        self.train_cfg = train_cfg
        self.test_cfg = dict(test_cfg or dict(mode='whole'))
        if self.test_cfg.get('mode', 'whole') not in ('slide', 'whole'):
            raise OVSSConfigError(
                f"test_cfg.mode must be 'slide' or 'whole', got "
                f"{self.test_cfg.get('mode')!r}")
        self.dataset_classes: Optional[Sequence[str]] = None
        self._attention_layers = resolve_layer_indices(
            getattr(head, 'required_attention_layers', ()),
            self.backbone.num_layers)

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
        first = [str(c).lower() for c in (self.dataset_classes or [])[:1]]
        first += [n.lower() for n in names[0]] if names else []
        return 0 if 'background' in first else None

    def vocabulary(self) -> Vocabulary:
        """The active vocabulary (parsed once per setting)."""
        key = (tuple(self.dataset_classes or ()), self.class_names_file,
               self.background_class, tuple(self.background_names or ()))
        if getattr(self, '_vocabulary_key', None) == key:
            return self._vocabulary
        vocab = vocabulary_from(self.dataset_classes, self.class_names_file)
        background = self._background_index(vocab.synonyms)
        vocab = Vocabulary(vocab.synonyms, background)
        if self.background_names and background is not None:
            synonyms = list(vocab.synonyms)
            synonyms[background] = tuple(self.background_names)
            vocab = Vocabulary(tuple(synonyms), background)
        if (self.class_names_file and self.dataset_classes is not None
                and len(self.dataset_classes) != vocab.num_classes):
            raise OVSSConfigError(
                f'class-name file {self.class_names_file} has '
                f'{vocab.num_classes} classes but the dataset has '
                f'{len(self.dataset_classes)}; use the file made for '
                'this dataset or drop text.class_names')
        self._vocabulary_key, self._vocabulary = key, vocab
        return vocab

    def vocabulary_embeddings(self) -> VocabularyEmbeddings:
        """Embeddings of the active vocabulary (cached by the encoder)."""
        with profile_stage('text'):
            return self.text_encoder(self.vocabulary())

    # ----------------------------------------------------------- inference
    def _encode_windows(self, windows: Tensor, vocab: VocabularyEmbeddings):
        """Yield head maps (n, C, h, w) at window pixel size, per chunk of
        ``window_batch_size`` windows (so that stitching never holds the
        maps of all windows at once).

        Windows are zero-padded bottom/right to a multiple of the patch and
        the maps cropped back (NACLIP's own whole-image code drops the
        remainder pixels instead)."""
        patch = self.backbone.patch_size
        height, width = windows.shape[-2:]
        pad_h, pad_w = -height % patch, -width % patch
        if pad_h or pad_w:
            windows = F.pad(windows, (0, pad_w, 0, pad_h))
        for chunk in windows.split(self.window_batch_size):
            with profile_stage('backbone'):
                feats = self._backbone_features(chunk)
            with profile_stage('head'):
                maps = self.decode_head(feats, vocab)
                mode = self.decode_head.window_resize_mode
                maps = F.interpolate(
                    maps.float(), size=windows.shape[-2:], mode=mode,
                    align_corners=False if mode in ('bilinear', 'bicubic')
                    else None)
            yield maps[..., :height, :width]

    def _backbone_features(self, images: Tensor):
        head = self.decode_head
        return self.backbone(images, attention_layers=self._attention_layers,
                             with_cls=head.requires_cls_token,
                             attention_heads=head.attention_heads)

    def inference_maps(self, image: Tensor,
                       vocab: VocabularyEmbeddings) -> Tensor:
        """Head maps (1, C, H, W) of one normalised image: the stitched
        window maps passed through ``decode_head.image_maps``."""
        maps = self._stitched_maps(image, vocab)
        with profile_stage('head'):
            return self.decode_head.image_maps(
                maps, image, vocab, self.backbone.encode_cls,
                self.backbone.patch_size)

    def _stitched_maps(self, image: Tensor,
                       vocab: VocabularyEmbeddings) -> Tensor:
        """Window maps (1, C, H, W) stitched with mmseg's slide rule."""
        height, width = image.shape[-2:]
        if self.test_cfg.get('mode', 'whole') == 'whole':
            return torch.cat(list(self._encode_windows(image, vocab)))
        crop = _pair(self.test_cfg.get('crop_size'), 'crop_size')
        stride = _pair(self.test_cfg.get('stride'), 'stride')
        windows = slide_windows(height, width, crop, stride)
        crops = torch.cat([image[..., y1:y2, x1:x2]
                           for y1, y2, x1, x2 in windows])
        total = count = None
        boxes = iter(windows)
        for maps in self._encode_windows(crops, vocab):
            with profile_stage('postprocess'):  # stitching
                if total is None:
                    total = maps.new_zeros((1, maps.shape[1], height, width))
                    count = maps.new_zeros((1, 1, height, width))
                for window_map in maps:
                    y1, y2, x1, x2 = next(boxes)
                    total[0, :, y1:y2, x1:x2] += window_map
                    count[..., y1:y2, x1:x2] += 1
        with profile_stage('postprocess'):
            return total / count

    def class_scores(self, image: Tensor, vocab: VocabularyEmbeddings,
                     out_shape: Tuple[int, int]) -> Tensor:
        """(K, H, W) class scores of one image at ``out_shape``."""
        maps = self.inference_maps(image, vocab)
        with profile_stage('postprocess'):
            maps = F.interpolate(maps, size=tuple(out_shape),
                                 mode='bilinear', align_corners=False)
            if self.pamr is not None:
                maps = self.pamr(image, maps)
        with profile_stage('head'):
            scores = self.decode_head.class_scores(maps, vocab)
        return scores[0]

    def predict_labels(self, scores: Tensor,
                       vocab: VocabularyEmbeddings) -> Tensor:
        """Background rules and argmax: (K, H, W) -> (1, H, W) labels."""
        background = vocab.background_class
        if self.area_thd is not None and scores.shape[0] > 1:
            labels = scores.argmax(0)
            area = torch.bincount(labels.flatten(),
                                  minlength=scores.shape[0]).float()
            foreground = torch.ones_like(area, dtype=torch.bool)
            if background is not None:
                foreground[background] = False
            keep = area > self.area_thd * area[foreground].sum()
            keep = keep | ~foreground
            scores = scores * keep.to(scores.dtype).view(-1, 1, 1)
        max_score, labels = scores.max(0, keepdim=True)
        if background is not None and self.prob_thd > 0:
            labels[max_score < self.prob_thd] = background
        return labels

    def predict(self, inputs: Tensor,
                data_samples: OptSampleList = None) -> SampleList:
        if inputs.dim() != 4 or inputs.shape[1] != 3:
            raise OVSSDataError(
                f'expected a (B, 3, H, W) batch of RGB images, got '
                f'{tuple(inputs.shape)}; load images as 3-channel colour '
                "(LoadImageFromFile's default color_type='color' converts "
                'grayscale and RGBA)')
        metas = self._metas(inputs, data_samples)
        vocab = self.vocabulary_embeddings()
        if data_samples is None:
            from mmseg.structures import SegDataSample
            data_samples = [SegDataSample() for _ in metas]
        for index, meta in enumerate(metas):
            height, width = meta['img_shape'][:2]
            image = inputs[index:index + 1, :, :height, :width]
            with torch.no_grad():
                scores = self.class_scores(image, vocab,
                                           meta['ori_shape'][:2])
                with profile_stage('postprocess'):
                    labels = self.predict_labels(scores, vocab)
            data_samples[index].set_data({
                'seg_logits': PixelData(data=scores),
                'pred_sem_seg': PixelData(data=labels)})
        return data_samples

    @staticmethod
    def _metas(inputs: Tensor, data_samples: OptSampleList) -> List[Dict]:
        if data_samples is not None:
            return [sample.metainfo for sample in data_samples]
        shape = tuple(inputs.shape[-2:])
        return [dict(ori_shape=shape, img_shape=shape, pad_shape=shape,
                     padding_size=[0, 0, 0, 0])] * inputs.shape[0]

    # ------------------------------------------------- BaseSegmentor API
    def extract_feat(self, inputs: Tensor):
        """Dense CLIP features of whole (B, 3, H, W) inputs."""
        return self._backbone_features(inputs)

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]):
        """Stitched head maps at input size, one image after another."""
        vocab = self.vocabulary_embeddings()
        return torch.cat([self.inference_maps(inputs[i:i + 1], vocab)
                          for i in range(inputs.shape[0])])

    def _forward(self, inputs: Tensor, data_samples: OptSampleList = None):
        return self.encode_decode(inputs, self._metas(inputs, data_samples))

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        raise NotImplementedError(
            f'{type(self).__name__} is training-free: run tools/test.py '
            '(no checkpoint needed), not tools/train.py')
