"""PnP-OVSS: segmentation from BLIP's text-to-image cross-attention.

Luo et al., "Emergent Open-Vocabulary Semantic Segmentation from Off-the-shelf
Vision-Language Models", CVPR 2024. Per image:

1. one caption "a picture of <class 1> ... <class K>" (chunked when longer
   than BLIP's text limit, ``mmseg_ovss.blip.caption``);
2. cross-attention of one text layer/head to the image patches, sharpened by
   GradCAM with the ITM match logit (Eq. 1,
   ``mmseg_ovss.blip.cross_attention``);
3. Salience DropOut (Eqs. 2-3, ``mmseg_ovss.blip.salience_dropout``);
4. per-class min-max, threshold T, Gaussian blur, DenseCRF, "all classes off"
   background (§3.3, ``mmseg_ovss.blip.postprocess``, ``utils.crf``).

Every stage can be switched off (``use_gradcam``, ``salience_dropout``,
``threshold``, ``blur_sigma``, ``crf``) to reproduce the paper's Table 5.
GradCAM needs gradients inside mmengine's no-grad test loop: the text side is
run under ``torch.enable_grad``; the image encoder runs without gradients
unless ``image_encoder_grad=True`` (the authors' way; same maps, slower).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import MODELS
from torch import Tensor

from mmseg_ovss.blip.caption import (DEFAULT_PREFIX, CaptionBatch,
                                     build_captions)
from mmseg_ovss.blip.caption_names import read_caption_names
from mmseg_ovss.blip.class_source import ClassSource
from mmseg_ovss.blip.vlm import build_cross_attention
from mmseg_ovss.blip.postprocess import (THRESHOLD_MODES, add_background,
                                         gaussian_blur, minmax_per_class,
                                         resize_maps, threshold_maps)
from mmseg_ovss.blip.salience_dropout import SCHEDULES, salience_dropout
from mmseg_ovss.blip.stages import PnPStages
from mmseg_ovss.blip.vocabulary import read_synonyms
from mmseg_ovss.utils.crf import dense_crf, require_crf
from mmseg_ovss.utils.errors import OVSSConfigError
from mmseg_ovss.utils.profiler import profile_stage

#: DenseCRF settings of the paper (§4: CutLER's, untuned; the authors'
#: ``densecrf`` in ``PnP_OVSS_0514_updated_segmentation.py``).
DEFAULT_CRF = dict(iterations=10, gaussian_sxy=3, gaussian_compat=7,
                   bilateral_sxy=50, bilateral_srgb=5, bilateral_compat=10)
DEFAULT_DROPOUT = dict(schedule='median', iterations=4, top_k=10)
_CAPTION_CACHE_SIZE = 256
#: ``minmax``: per-class min-max before the threshold (§3.3); ``softmax``:
#: softmax over the classes, no threshold (§3, the attention-only maps).
NORMALIZATIONS = ('minmax', 'softmax')


def _head_index(head: Union[int, str, None]) -> Optional[int]:
    """1-based head (or 'mean') -> 0-based index (None = mean)."""
    if head is None or (isinstance(head, str) and head == 'mean'):
        return None
    if isinstance(head, bool) or not isinstance(head, int):
        raise OVSSConfigError(
            f'cross_attention_head={head!r}: give a 1-based head number or '
            '"mean" (the mean over all heads of the layer, Table 6).')
    return head - 1


@MODELS.register_module()
class PnPOVSS(BaseSegmentor):
    """Training-free PnP-OVSS segmentor over a BLIP or BridgeTower ITM model.

    Args:
        blip: arguments of :func:`mmseg_ovss.blip.loading.load_blip_itm`
            (``pretrained`` hub id / alias / local folder, or ``config`` and
            ``tokenizer`` for random weights).
        bridgetower: instead of ``blip``, arguments of
            :func:`mmseg_ovss.blip.bridgetower.load_bridgetower_itm` (the
            paper's second VLM, §4 and Tables 2-3).
        class_names: class-name file or list (synonyms ", "-separated; the
            caption uses the first). Required unless ``dataset_meta`` holds
            ``classes``.
        caption_names: the words written into the caption for each class
            instead of its first synonym: a list (one per class) or
            ``dict(path='data/class_names/pnp_authors_caption_names.json',
            key='ade150')`` (the authors' spellings; see
            :mod:`mmseg_ovss.blip.caption_names`). None: the first
            synonyms.
        shared_synonyms: ``'error'`` (default): a synonym on two lines is
            an error; ``'allow'``: accepted with a warning (reference files
            such as COCO-Object's, whose background words include "bed").
        class_source: :class:`mmseg_ovss.blip.class_source.ClassSource`
            arguments (default: the whole vocabulary).
        caption_prefix: text before the class names ("a picture of").
        max_caption_tokens: caption length limit; longer vocabularies are
            chunked. Default: the text encoder's position count (512).
        cross_attention_layer / cross_attention_head: 1-based, the authors'
            search result (BLIP 8 / 10, BridgeTower 2 / 8; Table 2);
            ``cross_attention_head='mean'``: the mean of the per-head maps
            of the layer (Table 6, "Layer Mean").
        use_gradcam: weight the attention with the ITM gradient (Eq. 1).
        image_encoder_grad: backpropagate through the ViT too (authors).
        salience_dropout: ``dict(schedule='median'|'top_k', iterations=4,
            top_k=10)``; None runs a single pass.
        normalization: ``'minmax'`` (per class, then the threshold; §3.3)
            or ``'softmax'`` over the classes of the raw maps (§3: how the
            paper scores the attention-only maps of Table 5's first row;
            needs ``threshold=None``).
        threshold: T on the per-class min-max maps; None keeps the
            normalised maps.
        threshold_mode: ``'binary'`` (paper) or ``'masked'`` (authors).
        blur_sigma: Gaussian sigma as a fraction of the image's longer side;
            None switches the blur off.
        crf: :func:`mmseg_ovss.utils.crf.dense_crf` settings; None = off.
        background: add the "all classes off" channel.
        background_index: label the background channel predicts; None
            predicts ``ignore_index`` (datasets without a background class).
        ignore_index: label of "no prediction".
        input_size: (H, W) the BLIP input is resized to; None keeps the test
            pipeline's size rounded to whole patches.
    """

    def __init__(self,
                 blip: Optional[dict] = None,
                 class_names: Union[str, Sequence, None] = None,
                 caption_names: Union[dict, Sequence, None] = None,
                 bridgetower: Optional[dict] = None,
                 shared_synonyms: str = 'error',
                 class_source: Optional[dict] = None,
                 caption_prefix: str = DEFAULT_PREFIX,
                 max_caption_tokens: Optional[int] = None,
                 cross_attention_layer: int = 8,
                 cross_attention_head: int = 10,
                 use_gradcam: bool = True,
                 image_encoder_grad: bool = False,
                 salience_dropout: Optional[dict] = DEFAULT_DROPOUT,
                 normalization: str = 'minmax',
                 threshold: Optional[float] = 0.15,
                 threshold_mode: str = 'binary',
                 blur_sigma: Optional[float] = 0.05,
                 crf: Optional[dict] = DEFAULT_CRF,
                 background: bool = True,
                 background_index: Optional[int] = None,
                 ignore_index: int = 255,
                 input_size: Optional[Tuple[int, int]] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        # An nn.Module without ``init_weights``: mmengine never re-initialises
        # the loaded VLM weights.
        self.cross_attention, self.tokenizer = build_cross_attention(
            blip, bridgetower, cross_attention_layer,
            _head_index(cross_attention_head))
        self.enc_token_id = self.cross_attention.caption_start_id(
            self.tokenizer)
        limit = self.cross_attention.max_text_tokens
        self.max_caption_tokens = max_caption_tokens or limit
        if self.max_caption_tokens > limit:
            raise OVSSConfigError(
                f'max_caption_tokens={self.max_caption_tokens} exceeds the '
                f'{limit} text positions of the '
                f'{self.cross_attention.vlm_name}.')
        self.caption_names = (read_caption_names(caption_names)
                              if caption_names is not None else None)
        self.caption_prefix = caption_prefix
        self.shared_synonyms = shared_synonyms
        self.synonyms = (read_synonyms(class_names, shared_synonyms)
                         if class_names is not None else None)
        # the model's ignore_index unless the class source sets its own
        self.class_source = ClassSource(
            **{'ignore_index': ignore_index, **(class_source or {})})
        self.use_gradcam = use_gradcam
        self.image_encoder_grad = image_encoder_grad
        self.salience_dropout = self._check_dropout(salience_dropout)
        if threshold_mode not in THRESHOLD_MODES:
            raise OVSSConfigError(
                f'threshold_mode must be one of {THRESHOLD_MODES}.')
        if normalization not in NORMALIZATIONS:
            raise OVSSConfigError(
                f'normalization must be one of {NORMALIZATIONS}.')
        if normalization == 'softmax' and threshold is not None:
            raise OVSSConfigError(
                'normalization="softmax" replaces the per-class threshold; '
                'set threshold=None.')
        self.normalization = normalization
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.blur_sigma = blur_sigma
        if crf is not None and not isinstance(crf, dict):
            raise OVSSConfigError(
                f'crf must be None or a dict of dense_crf settings, got '
                f'{crf!r} ({type(crf).__name__}); on the command line set '
                'single values (--cfg-options model.crf.iterations=2) or '
                'switch it off (model.crf=None)')
        if crf is not None:
            require_crf()
            crf = {**DEFAULT_CRF, **crf}
        self.crf = crf
        self.background = background
        self.background_index = background_index
        self.ignore_index = ignore_index
        self.input_size = tuple(input_size) if input_size else None
        self._captions: Dict[tuple, CaptionBatch] = {}

    @staticmethod
    def _check_dropout(cfg: Optional[dict]) -> dict:
        if cfg is None:
            return dict(schedule='median', iterations=1, top_k=0)
        cfg = {**DEFAULT_DROPOUT, **cfg}
        if cfg['schedule'] not in SCHEDULES:
            raise OVSSConfigError(
                f'salience_dropout.schedule must be one of {SCHEDULES}.')
        return cfg

    # ------------------------------------------------------------ vocabulary
    @property
    def vocabulary(self) -> List[List[str]]:
        if self.synonyms is not None:
            return self.synonyms
        meta = getattr(self, 'dataset_meta', None) or {}
        if meta.get('classes'):
            self.synonyms = read_synonyms(list(meta['classes']),
                                          self.shared_synonyms)
            return self.synonyms
        raise OVSSConfigError(
            'PnP-OVSS has no vocabulary: set model.class_names to a '
            'class-name file (e.g. data/class_names/voc20.txt) or a list.')

    def set_vocabulary(self, class_names: Sequence,
                       background_class: Optional[int] = None) -> None:
        """Replace the vocabulary (``background_class``: its background
        index, predicted by the "all classes off" channel, or None)."""
        self.synonyms = read_synonyms(class_names, self.shared_synonyms)
        self.background_index = background_class
        self.caption_names = None  # they belonged to the old vocabulary
        self._captions.clear()

    def caption_name(self, index: int) -> str:
        """The caption word(s) of vocabulary class ``index``."""
        vocabulary = self.vocabulary
        if self.caption_names is None:
            return vocabulary[index][0]
        if len(self.caption_names) != len(vocabulary):
            raise OVSSConfigError(
                f'caption_names has {len(self.caption_names)} names but the '
                f'vocabulary {len(vocabulary)} classes; give one caption '
                'name per class (in vocabulary order) or caption_names=None.')
        return self.caption_names[index]

    def captions(self, class_ids: Sequence[int]) -> CaptionBatch:
        """Caption chunks for the given vocabulary indices (cached)."""
        key = tuple(class_ids)
        if key not in self._captions:
            if len(self._captions) >= _CAPTION_CACHE_SIZE:
                self._captions.clear()
            names = [self.caption_name(i) for i in class_ids]
            with profile_stage('text'):
                self._captions[key] = build_captions(
                    self.tokenizer, names, self.enc_token_id,
                    self.max_caption_tokens, self.caption_prefix)
        return self._captions[key]

    # -------------------------------------------------------------- salience
    def to_patch_grid(self, image: Tensor) -> Tensor:
        """Resize (B, 3, H, W) so both sides are whole patches."""
        p = self.cross_attention.patch_size
        if self.input_size is not None:
            size = self.input_size
        else:
            size = tuple(max(p, int(round(s / p)) * p)
                         for s in image.shape[-2:])
        if tuple(image.shape[-2:]) == tuple(size):
            return image
        return F.interpolate(image, size=size, mode='bilinear',
                             align_corners=False)

    def class_salience(self, pixels: Tensor, class_ids: Sequence[int],
                       stages: Optional[PnPStages] = None) -> Tensor:
        """Summed GradCAM class maps (B, K, h, w) after Salience DropOut.

        Args:
            pixels: (B, 3, H, W) normalised images, H and W whole patches.
            class_ids: vocabulary indices captioned for every image.
            stages: given (one image), each pass's attention, GradCAM and
                patch mask are recorded in it; None records nothing.
        """
        captions = self.captions(class_ids).to(pixels.device)
        p = self.cross_attention.patch_size
        num_images = pixels.shape[0]
        h, w = pixels.shape[-2] // p, pixels.shape[-1] // p

        def compute_maps(keep: Tensor) -> Tensor:
            mask = keep.view(num_images, 1, h, 1, w, 1).expand(
                -1, 1, -1, p, -1, p).reshape(num_images, 1, h * p, w * p)
            blanked = pixels * mask.to(pixels.dtype)
            grad_inputs = None
            with profile_stage('backbone'):
                if self.image_encoder_grad and self.use_gradcam:
                    grad_inputs = blanked.detach().requires_grad_(True)
                    with torch.enable_grad():
                        embeds = self.cross_attention.encode_image(grad_inputs)
                else:
                    with torch.no_grad():
                        embeds = self.cross_attention.encode_image(blanked)
            with profile_stage('head'):
                maps = self.cross_attention.token_maps(
                    embeds, captions.input_ids, captions.attention_mask,
                    with_gradcam=self.use_gradcam, grad_inputs=grad_inputs)
                tokens = maps.gradcam if self.use_gradcam else maps.attention
                per_class = torch.einsum('bctp,ckt->bckp', tokens,
                                         captions.token_weights)
                per_class = per_class[:, captions.class_valid]
                if stages is not None:
                    self._record_pass(stages, maps, captions, keep, per_class,
                                      (h, w))
                return per_class

        keep = torch.ones(num_images, h * w, dtype=torch.bool,
                          device=pixels.device)
        total, _ = salience_dropout(
            compute_maps, keep, self.salience_dropout['schedule'],
            self.salience_dropout['iterations'],
            self.salience_dropout['top_k'])
        if stages is not None:
            stages.salience = total[0].view(-1, h, w).detach()
        return total.view(num_images, -1, h, w)

    def _record_pass(self, stages: PnPStages, maps, captions, keep: Tensor,
                     per_class: Tensor, grid) -> None:
        """Keep one Salience-DropOut pass of image 0 (as summed: dropped
        patches 0)."""
        shown = keep[0].view(1, *grid)
        stages.keeps.append(shown[0].clone())
        if self.use_gradcam:
            attention = torch.einsum('bctp,ckt->bckp', maps.attention,
                                     captions.token_weights)
            attention = attention[0, captions.class_valid]
            stages.gradcam.append(
                per_class[0].detach().view(-1, *grid) * shown)
        else:
            attention = per_class[0]
        stages.attention.append(attention.detach().view(-1, *grid) * shown)

    # ---------------------------------------------------------- post-process
    def postprocess_salience(self, salience: Tensor, ori_shape,
                             image_rgb: Optional[np.ndarray] = None,
                             stages: Optional[PnPStages] = None) -> Tensor:
        """(K, h, w) salience -> (C, H, W) channel scores at ``ori_shape``.

        Channel 0 is the background channel when ``background`` is on.
        ``stages``: record the maps after each step in it (None: nothing).
        """
        with profile_stage('postprocess'):
            if self.normalization == 'softmax':
                maps = salience.float().softmax(0)
            elif self.threshold is not None:
                maps = threshold_maps(salience, self.threshold,
                                      self.threshold_mode)
            else:
                maps = minmax_per_class(salience)
            if stages is not None:
                stages.normalized = maps
            maps = resize_maps(maps, ori_shape)
            if self.background:
                maps = add_background(maps)
            if stages is not None:
                stages.resized = maps
            if self.blur_sigma:
                maps = torch.from_numpy(
                    gaussian_blur(maps.cpu().numpy(), self.blur_sigma))
                if stages is not None:
                    stages.blurred = maps
            if self.crf is not None:
                if image_rgb is None:
                    raise OVSSConfigError('DenseCRF needs the RGB image.')
                probs = maps.float().softmax(0).cpu().numpy()
                maps = torch.from_numpy(dense_crf(image_rgb, probs,
                                                  **self.crf))
                if stages is not None:
                    stages.crf = maps
        return maps

    def channel_labels(self, class_ids: Sequence[int], device) -> Tensor:
        """Dataset label of every output channel."""
        labels = list(class_ids)
        if self.background:
            bg = (self.background_index if self.background_index is not None
                  else self.ignore_index)
            labels = [bg] + labels
        return torch.as_tensor(labels, dtype=torch.long, device=device)

    def image_rgb(self, image: Tensor, ori_shape) -> np.ndarray:
        """Undo the pre-processor's normalisation: (H, W, 3) uint8 RGB."""
        pre = self.data_preprocessor
        mean = getattr(pre, 'mean', None)
        std = getattr(pre, 'std', None)
        pixels = image.float()
        if mean is not None and std is not None:
            pixels = pixels * std.view(-1, 1, 1) + mean.view(-1, 1, 1)
        rgb = pixels.clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
        height, width = ori_shape
        return cv2.resize(rgb, (width, height),
                          interpolation=cv2.INTER_LINEAR)

    def segment(self, image: Tensor, class_ids: Sequence[int], ori_shape
                ) -> Tuple[Tensor, Tensor]:
        """Segment one normalised (3, H, W) image.

        Returns the (C, H0, W0) channel scores and the (H0, W0) label map.
        """
        return self._segment(image, class_ids, ori_shape, None)

    def segment_stages(self, image: Tensor, class_ids: Sequence[int],
                       ori_shape) -> PnPStages:
        """:meth:`segment` of one image, with the maps of every stage
        (:class:`mmseg_ovss.blip.stages.PnPStages`; paper Figs. 2-4)."""
        stages = PnPStages(class_ids=list(class_ids))
        scores, labels = self._segment(image, class_ids, ori_shape, stages)
        stages.scores, stages.labels = scores, labels
        stages.channel_labels = self.channel_labels(class_ids, image.device)
        return stages

    def _segment(self, image: Tensor, class_ids: Sequence[int], ori_shape,
                 stages: Optional[PnPStages]) -> Tuple[Tensor, Tensor]:
        if len(class_ids) == 0:
            labels = torch.full(tuple(ori_shape), self.ignore_index,
                                dtype=torch.long, device=image.device)
            if self.background and self.background_index is not None:
                labels.fill_(self.background_index)
            return image.new_zeros((0, *ori_shape)), labels
        pixels = self.to_patch_grid(image[None])
        salience = self.class_salience(pixels, class_ids, stages)[0]
        rgb = self.image_rgb(image, ori_shape) if self.crf else None
        scores = self.postprocess_salience(salience, ori_shape, rgb, stages)
        scores = scores.to(image.device)
        channel = scores.argmax(0)
        labels = self.channel_labels(class_ids, image.device)[channel]
        return scores, labels

    # ----------------------------------------------------- mmseg interface
    def predict(self, inputs: Tensor, data_samples=None):
        """Segment a batch; fills ``pred_sem_seg`` and ``seg_logits``."""
        if data_samples is None:
            from mmseg.structures import SegDataSample
            data_samples = [SegDataSample(metainfo=dict(
                img_shape=inputs.shape[-2:], ori_shape=inputs.shape[-2:]))
                for _ in range(inputs.shape[0])]
        vocabulary = self.vocabulary
        for image, sample in zip(inputs, data_samples):
            meta = sample.metainfo
            img_h, img_w = meta.get('img_shape', image.shape[-2:])[:2]
            ori_shape = tuple(meta.get('ori_shape', (img_h, img_w))[:2])
            class_ids = self.captioned_classes(sample)
            scores, labels = self.segment(image[:, :img_h, :img_w],
                                          class_ids, ori_shape)
            class_scores = self.vocabulary_scores(
                scores, class_ids, len(vocabulary), ori_shape)
            sample.set_data(dict(
                seg_logits=PixelData(data=class_scores),
                pred_sem_seg=PixelData(data=labels[None])))
        return data_samples

    def vocabulary_scores(self, scores: Tensor, class_ids: Sequence[int],
                          num_classes: int, ori_shape) -> Tensor:
        """Spread the (C, H, W) channel scores over the vocabulary.

        The background channel goes to ``background_index`` when it has one,
        so that the argmax of the result is the predicted label map
        (predictions of ``ignore_index`` have no channel).
        """
        out = scores.new_zeros((num_classes, *ori_shape))
        offset = 1 if self.background else 0
        if len(class_ids):
            out[torch.as_tensor(class_ids, device=out.device)] = \
                scores[offset:]
        if self.background and self.background_index is not None:
            # no captioned class: every pixel is background
            out[self.background_index] = (scores[0] if len(class_ids)
                                          else 1)
        return out

    def captioned_classes(self, data_sample) -> List[int]:
        """Vocabulary indices captioned for a sample (never the background
        class, which the "all classes off" channel predicts)."""
        class_ids = self.class_source(data_sample, self.vocabulary)
        return [c for c in class_ids if c != self.background_index]

    def extract_feat(self, inputs: Tensor) -> Tensor:
        """Image encoder output of the patch-aligned inputs (BLIP: ViT
        tokens (B, 1 + P, D); BridgeTower: the pixels, which its
        cross-modal forward encodes)."""
        with torch.no_grad():
            return self.cross_attention.encode_image(
                self.to_patch_grid(inputs))

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]
                      ) -> Tensor:
        """Vocabulary salience maps (B, K, H, W) at the input size."""
        class_ids = [c for c in range(len(self.vocabulary))
                     if c != self.background_index]
        salience = self.class_salience(self.to_patch_grid(inputs), class_ids)
        return F.interpolate(salience, size=inputs.shape[-2:],
                             mode='bilinear', align_corners=True)

    def _forward(self, inputs: Tensor, data_samples=None) -> Tensor:
        return self.encode_decode(inputs, None)

    def loss(self, inputs: Tensor, data_samples) -> dict:
        raise OVSSConfigError(
            'PnP-OVSS is training-free: run tools/test.py, not train.py.')
