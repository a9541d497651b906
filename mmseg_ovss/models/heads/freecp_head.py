"""FreeCP: training-free class purification as a decode head.

Plugs into ``CLIPDenseSegmentor`` with any dense strategy: a baseline config
and its FreeCP config differ only in ``decode_head`` (and thresholds). The
method's steps live in :mod:`mmseg_ovss.freecp`; this module handles the
text side (templates or descriptions, Table 4) and the background rule.
Reference code: ``chenqi1126/FreeCP`` (freecp_segmentor.py).
"""
import inspect
from functools import partial
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor

from mmseg_ovss.clip.dense_head import DenseCLIPHead, StitchedMaps
from mmseg_ovss.clip.features import DenseCLIPFeatures, VocabularyEmbeddings
from mmseg_ovss.freecp.cam import query_activation_maps
from mmseg_ovss.freecp.crops import check_crop_precision, crop_dtype
from mmseg_ovss.freecp.descriptions import (description_class_embeddings,
                                            described_queries,
                                            load_descriptions,
                                            template_class_embeddings)
from mmseg_ovss.freecp.pipeline import FreeCPWindowPipeline
from mmseg_ovss.freecp.gt_vocabulary import (full_vocabulary,
                                             restrict_rows)
from mmseg_ovss.utils.errors import OVSSConfigError

TEXT_SOURCES = ('templates', 'descriptions')
PURIFICATION_SCOPES = ('window', 'image')


@MODELS.register_module()
class FreeCPHead(DenseCLIPHead):
    """FreeCP head (Chen et al., ICCV 2025, Sec. 3).

    Window maps are the purified refined maps of the foreground classes,
    in [0, 1] (the background channel is zero); after stitching,
    :meth:`class_scores` sets the background to ``1 - max_c`` when the
    vocabulary has one (Sec. 3.3; the authors' ``postprocess_result``). Set
    the segmentor's ``prob_thd``/``area_thd`` off. A vocabulary that holds
    only its background class has nothing to purify: every pixel is
    background (score 1; the max over no class counts as 0), as the
    authors' code labels every pixel 0 when no class is left.

    Args:
        descriptions: description file (``data/descriptions/<vocab>.json``),
            or ``dict(path=..., deduplicate=False)`` (``deduplicate=True``
            counts a repeated sentence once; the authors' code averages
            every copy), or None to use templates wherever descriptions
            would be used.
        initial_text: text of the CAM queries, ``'templates'`` (default) or
            ``'descriptions'`` (Table 4 "Initial").
        ap_text: text the crops are matched against, ``'descriptions'``
            (default) or ``'templates'`` (Table 4 "AP").
        logit_scale: temperature of Eq. 1. None (default): the CLIP
            model's own ``logit_scale.exp()``, as the authors' code
            (``open_clip/model.py`` ``cam``), read from the backbone
            (``features.logit_scale``; 100 for OpenAI CLIP); a float
            overrides it.
        affinity_layers: blocks whose attention forms the affinity;
            ``'all_but_last'`` (authors) or a list of indices (e.g.
            ``[-9, -8, ..., -2]`` for CLIP-ES's last eight).
        purification_scope: ``'window'`` (authors: Eqs. 5-8 per sliding
            window) or ``'image'``: Eqs. 1-3 per window, the refined and
            softmax maps stitched to the image's patch grid, then Eqs. 5-8
            once per image with crops of the whole image
            (:meth:`image_maps`).
        crop_precision: dtype of the crop encoder of ambiguity
            purification (Eq. 8): ``'model'`` (default: the CLIP model's
            dtype, exact and the same on every machine), or a speed option
            that can flip a crop's winner on near ties: ``'half'`` (fp16 on
            CUDA, the authors' whole model being fp16; bf16 on a CPU whose
            bf16 matmuls are faster than fp32, as ``precision='auto'``
            decides: AMX, or AVX512-BF16 measured faster, e.g. AMD EPYC;
            the model's dtype elsewhere or when it is 16-bit already),
            ``'fp32'``, ``'fp16'``
            or ``'bf16'``. Only the crops' CLS embeddings change precision;
            the dense path keeps the model's.
        **pipeline: options of
            :class:`mmseg_ovss.freecp.pipeline.FreeCPWindowPipeline`
            (thresholds, purification order, metrics, ...).
    """
    requires_cls_token = False

    def __init__(self,
                 descriptions: Optional[str] = None,
                 initial_text: str = 'templates',
                 ap_text: str = 'descriptions',
                 logit_scale: Optional[float] = None,
                 affinity_layers: Union[str, Sequence[int]] = 'all_but_last',
                 purification_scope: str = 'window',
                 crop_precision: str = 'model',
                 init_cfg=None,
                 **pipeline):
        super().__init__(init_cfg=init_cfg)
        for name, value in (('initial_text', initial_text),
                            ('ap_text', ap_text)):
            if value not in TEXT_SOURCES:
                raise OVSSConfigError(
                    f'FreeCPHead {name}={value!r} is not one of '
                    f'{TEXT_SOURCES}')
            if value == 'descriptions' and descriptions is None:
                raise OVSSConfigError(
                    f"FreeCPHead {name}='descriptions' needs a description "
                    "file: set descriptions='data/descriptions/<vocab>.json' "
                    f"or {name}='templates'")
        if purification_scope not in PURIFICATION_SCOPES:
            raise OVSSConfigError(
                f'FreeCPHead purification_scope={purification_scope!r} is '
                f'not one of {PURIFICATION_SCOPES}')
        self.purification_scope = purification_scope
        check_crop_precision(crop_precision)
        self.crop_precision = crop_precision
        self.descriptions = descriptions
        self.initial_text = initial_text
        self.ap_text = ap_text
        if logit_scale is not None and not float(logit_scale) > 0:
            raise OVSSConfigError(
                f'FreeCPHead logit_scale must be positive or None (the '
                f"CLIP model's own), got {logit_scale!r}")
        self.logit_scale = None if logit_scale is None else \
            float(logit_scale)
        self.required_attention_layers = affinity_layers
        self.pipeline = FreeCPWindowPipeline(**pipeline)
        if purification_scope == 'image' and \
                self.pipeline.box_encoder == 'window_readout':
            raise OVSSConfigError(
                "FreeCPHead box_encoder='window_readout' reads each box from "
                "the tokens of its window, which purification_scope='image' "
                "does not have; use purification_scope='window' or "
                "box_encoder='crop'")
        # Eq. 2 reads one map per layer: let the backbone keep only that
        # (the head mean, or the one head of the GEM configs).
        head = self.pipeline.affinity_head
        self.attention_heads = 'mean' if head is None else int(head)
        if purification_scope == 'image':
            # nearest resizing lets image_maps recover the window grids
            # exactly where windows sit on the image's patch grid
            self.window_resize_mode = 'nearest-exact'
        self._table = None
        self._cache: Dict[Tuple, Tuple] = {}

    # ------------------------------------------------------------- text side
    def _description_table(self):
        if self._table is None:
            self._table = load_descriptions(self.descriptions)
        return self._table

    def _text(self, vocab: VocabularyEmbeddings) -> Tuple:
        """(CAM queries, their classes, class embeddings for the crops).

        A vocabulary restricted to some classes (the ground-truth oracle,
        :mod:`mmseg_ovss.freecp.gt_vocabulary`) takes the rows
        of its classes from the full vocabulary's text, so nothing is
        encoded again per image."""
        parent, class_ids = full_vocabulary(vocab)
        queries, owners, crop_text = self._full_text(parent)
        if class_ids is None:
            return queries, owners, crop_text
        class_ids = class_ids.to(owners.device)
        queries, owners = restrict_rows(queries, owners, class_ids)
        return queries, owners, crop_text[class_ids.to(crop_text.device)]

    def _full_text(self, vocab: VocabularyEmbeddings) -> Tuple:
        """:meth:`_text` of a full vocabulary, cached per vocabulary."""
        key = (id(vocab), tuple(vocab.class_names),
               vocab.query_embeddings.data_ptr())
        if key in self._cache:
            return self._cache[key]
        foreground = [c for c in range(vocab.num_classes)
                      if c != vocab.background_class]
        templates = template_class_embeddings(vocab)
        described = None
        if 'descriptions' in (self.initial_text, self.ap_text):
            described, missing = description_class_embeddings(
                vocab, self._description_table(), foreground)
            missing = set(missing)
        if self.initial_text == 'descriptions':
            queries, owners = described_queries(vocab, described, missing)
        else:
            queries, owners = vocab.query_embeddings, vocab.query_to_class
        crop_text = described if self.ap_text == 'descriptions' \
            else templates
        self._cache = {key: (queries, owners.long(), crop_text)}
        return self._cache[key]

    # ---------------------------------------------------------- image side
    def num_output_maps(self, vocab: VocabularyEmbeddings) -> int:
        """One map per class; ``'image'`` scope: refined and softmax maps
        of each foreground class (what :meth:`image_maps` purifies)."""
        if self.purification_scope == 'window':
            return vocab.num_classes
        return 2 * len(self._foreground(vocab))

    @staticmethod
    def _foreground(vocab: VocabularyEmbeddings):
        return [c for c in range(vocab.num_classes)
                if c != vocab.background_class]

    @staticmethod
    def _check_grid(features: DenseCLIPFeatures, layers) -> None:
        h, w = features.patch_tokens.shape[-2:]
        patches = features.attn_weights[layers[0]].shape[-1] - 1
        if patches != h * w:
            raise OVSSConfigError(
                f'FreeCPHead: the captured CLIP attention covers {patches} '
                f'patches but the dense tokens form a {h}x{w} grid '
                f'({h * w} patches); the '
                'affinity (Eq. 2) refines the token maps (Eq. 3), so both '
                'must be on the same patch grid. ProxyCLIP with DINO '
                'ViT-B/8 puts the tokens on an 8-pixel grid and the '
                "attention on CLIP's 16-pixel grid: use a VFM with CLIP's "
                "patch size (backbone=dict(dense_strategy=dict(vfm_model="
                "'vit_base_patch16_224', vfm_checkpoint=<DINO ViT-B/16 "
                'weights>))) or another '
                'baseline')

    def cam_scale(self, features: DenseCLIPFeatures):
        """Temperature of Eq. 1: the configured one or the model's."""
        if self.logit_scale is not None:
            return self.logit_scale
        scale = getattr(features, 'logit_scale', None)
        if scale is None:
            raise OVSSConfigError(
                "FreeCPHead(logit_scale=None) multiplies the cosines of Eq. 1 "
                "by the CLIP model's own logit_scale.exp(), as the authors' "
                'code, but the features carry none: set '
                'features.logit_scale = <OpenCLIPTextEncoder>.logit_scale '
                '(CLIPDenseSegmentor does), or set a temperature, '
                'e.g. FreeCPHead(logit_scale=100.0)')
        return scale

    def forward(self, features: DenseCLIPFeatures,
                vocab: VocabularyEmbeddings) -> Tensor:
        foreground = self._foreground(vocab)
        b, _, h, w = features.patch_tokens.shape
        if not foreground:  # only a background class: nothing to purify
            return features.patch_tokens.new_zeros(
                b, self.num_output_maps(vocab), h, w)
        queries, owners, crop_text = self._text(vocab)
        query_maps = query_activation_maps(features.patch_tokens, queries,
                                           self.cam_scale(features))
        owners = owners.to(query_maps.device)
        layers = sorted(features.attn_weights)
        if not layers:
            raise OVSSConfigError(
                'FreeCPHead got no attention weights; the backbone must '
                'capture the layers in head.required_attention_layers')
        self._check_grid(features, layers)
        transition = self.pipeline.affinity(features.attn_weights, layers,
                                            features.attn_heads)
        if self.purification_scope == 'image':
            cams, refined = self.pipeline.refine(query_maps, owners,
                                                 foreground, transition)
            return torch.cat([refined, cams], dim=1)
        purified = self.pipeline(
            query_maps, owners, foreground, transition,
            images=features.images, patch_size=features.patch_size,
            encode_image=self._crop_encoder(features.encode_image,
                                            features.images.device),
            class_embeddings=crop_text,
            encode_regions=features.encode_regions)
        return self._with_background(purified, vocab)

    def _crop_encoder(self, encode_image: Optional[Callable],
                      device: torch.device) -> Optional[Callable]:
        """``encode_image`` at ``crop_precision``; unchanged when it takes
        no ``dtype`` (e.g. a plain open_clip ``encode_image``)."""
        if encode_image is None or \
                'dtype' not in inspect.signature(encode_image).parameters:
            return encode_image
        tower = getattr(encode_image, '__self__', None)
        dtype = crop_dtype(self.crop_precision, device,
                           getattr(tower, 'dtype', None))
        if dtype is None:
            return encode_image
        return partial(encode_image, dtype=dtype)

    @staticmethod
    def _with_background(purified: Tensor,
                         vocab: VocabularyEmbeddings) -> Tensor:
        """(B, K', h, w) foreground maps -> (B, K, h, w), background 0."""
        b, _, h, w = purified.shape
        maps = purified.new_zeros(b, vocab.num_classes, h, w)
        maps[:, FreeCPHead._foreground(vocab)] = purified
        return maps

    def image_maps(self, maps: Union[StitchedMaps, Tensor], images: Tensor,
                   vocab: VocabularyEmbeddings, encode_image,
                   patch_size: int) -> Union[StitchedMaps, Tensor]:
        """``'image'`` scope: Eqs. 5-8 once per image.

        The stitched (N, 2K', H, W) refined and softmax maps are averaged
        over each patch of the image's grid (ceil(H / p) x ceil(W / p),
        border replicated), purified with crops of the zero-padded image
        and resized back to (N, K, H, W) as the window maps are. Given
        :class:`StitchedMaps` (one image, from the segmentor), the patch
        means are computed on bands of rows and the purified grid is
        returned unresized (:meth:`StitchedMaps.from_grid`).
        """
        if self.purification_scope == 'window':
            return maps
        height, width = maps.shape[-2:]
        pad = (0, -width % patch_size, 0, -height % patch_size)
        if isinstance(maps, StitchedMaps):
            grid = maps.pooled(patch_size)
        else:
            grid = F.avg_pool2d(F.pad(maps, pad, mode='replicate'),
                                patch_size)
        purified = self._purify_grid(grid, F.pad(images, pad), vocab,
                                     encode_image, patch_size)
        if isinstance(maps, StitchedMaps):
            return StitchedMaps.from_grid(purified, (height, width),
                                          patch_size, 'bilinear')
        out = F.interpolate(purified, size=(height + pad[3], width + pad[1]),
                            mode='bilinear', align_corners=False)
        return out[..., :height, :width]

    def _purify_grid(self, grid: Tensor, images: Tensor,
                     vocab: VocabularyEmbeddings, encode_image,
                     patch_size: int) -> Tensor:
        """(N, 2K', h, w) patch-grid refined + softmax maps -> (N, K, h, w)
        purified maps with the background channel."""
        foreground = self._foreground(vocab)
        k = len(foreground)
        if not k:
            return grid.new_zeros(grid.shape[0], vocab.num_classes,
                                  *grid.shape[-2:])
        _, _, crop_text = self._text(vocab)
        purified = self.pipeline.purify(
            grid[:, k:], grid[:, :k], foreground, images=images,
            patch_size=patch_size,
            encode_image=self._crop_encoder(encode_image, images.device),
            class_embeddings=crop_text)
        return self._with_background(purified, vocab)

    def class_scores(self, maps: Tensor,
                     vocab: VocabularyEmbeddings) -> Tensor:
        """Background = 1 - max over the other classes (Sec. 3.3; the
        authors' ``postprocess_result``); 1 when there is no other class.
        Per pixel, so the segmentor scores bands of rows."""
        bg = vocab.background_class
        if bg is None:
            return maps
        scores = maps.clone()
        if maps.shape[1] == 1:
            scores[:, bg] = 1
            return scores
        scores[:, bg] = float('-inf')
        scores[:, bg] = 1 - scores.amax(dim=1)
        return scores
