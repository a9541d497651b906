"""CAT-Seg's decode head: cost volume, embedding, aggregation, upsampling
decoder (Cho et al., "CAT-Seg: Cost Aggregation for Open-Vocabulary
Semantic Segmentation", CVPR 2024, Sec. 3; ``KU-CVLAB/CAT-Seg``
``cat_seg/modeling/transformer/model.py``, ``Aggregator``).

The head is a pipeline of overridable steps over a :class:`CostState`, so
that DCP-CLIP's head (category selection, text-guided alignment, spatial
enhanced decoder) replaces single steps:

1. :meth:`~CATSegHead.init_state`: the visual features and the (C, P, D)
   per-template class embeddings;
2. :meth:`~CATSegHead.cost_volume`: ``C(i, c, p) = cos(F_i, T_{c,p})``
   (CAT-Seg Eq. 1; DCP-CLIP Eq. 6), (B, K, P, h, w);
3. :meth:`~CATSegHead.select_classes`: which K of the C classes go on
   (CAT-Seg's code keeps all when C <= ``pad_len``, else the ``pad_len``
   classes of highest cost; DCP-CLIP's category selection overrides it);
4. :meth:`~CATSegHead.embed`: 7x7 conv, P -> d (Eq. 2);
5. :meth:`~CATSegHead.project_guidance`: appearance guidance (3x3 conv +
   ReLU of the dense CLIP features), text guidance (linear + ReLU of the
   template-mean class embeddings), decoder guidance (upsampled CLIP
   layers);
6. :meth:`~CATSegHead.aggregate`: spatial + class aggregation (Eqs. 3-4);
7. :meth:`~CATSegHead.decode`: the upsampling decoder (Sec. 3.4);
8. :meth:`~CATSegHead.restore_classes`: logits of the unselected classes
   set to ``unselected_logit`` (-100 in CAT-Seg's code).

Training: per-pixel binary cross-entropy over all classes (Sec. 3.5) on the
logits resized to the label size; inference: sigmoid scores at the input
size.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.models.catseg.chunking import check_chunk_size
from mmseg_ovss.models.catseg.cost_volume import cosine_cost_volume
from mmseg_ovss.models.catseg.features import CLIPDenseFeatures
from mmseg_ovss.models.segmentors.open_vocab import (ClassEmbeddings,
                                                     OpenVocabInputs)
from mmseg_ovss.utils.errors import OVSSConfigError


#: P of a head built without a segmentor and without ``num_templates``
#: (the 80 'openai' templates)
DEFAULT_NUM_TEMPLATES = 80


@dataclass
class CostState:
    """The intermediate results of one head forward (each step fills its
    field; subclasses read and replace them).

    Attributes:
        visual: the segmentor's :class:`CLIPDenseFeatures`.
        text: the class embeddings of the active vocabulary (C classes).
        templates: (C, P, D) per-template class embeddings shared by the
            batch, or (B, K, P, D) per image once classes are selected.
        class_index: (B, K) vocabulary ids of the K classes that go on, in
            increasing order, or None when all C go on in order.
        cost: (B, K, P, h, w) the initial cost volume (cosine similarities).
        cost_feature: (B, K, d, h, w) the embedded cost volume.
        appearance_guidance: (B, Ga, h, w) or None.
        text_guidance: (B, K, Gt) or None.
        decoder_guidance: one (B, G_i, h_i, w_i) map (or None) per decoder
            stage.
        aggregated: (B, K, d, h, w) after the aggregator.
        logits: (B, C, H', W') logits of every class (unselected ones at
            ``unselected_logit``).
    """
    visual: CLIPDenseFeatures
    text: ClassEmbeddings
    templates: Tensor
    class_index: Optional[Tensor] = None
    cost: Optional[Tensor] = None
    cost_feature: Optional[Tensor] = None
    appearance_guidance: Optional[Tensor] = None
    text_guidance: Optional[Tensor] = None
    decoder_guidance: Optional[List[Optional[Tensor]]] = None
    aggregated: Optional[Tensor] = None
    logits: Optional[Tensor] = None

    @property
    def batch_size(self) -> int:
        return self.visual.patches.shape[0]

    @property
    def num_classes(self) -> int:
        """C, the size of the active vocabulary."""
        return self.text.num_classes


def gather_shared(x: Tensor, index: Tensor) -> Tensor:
    """(C, ...) shared rows -> (B, K, ...) rows ``index`` of each image."""
    return x[index]


def gather_per_image(x: Tensor, index: Tensor) -> Tensor:
    """(B, C, ...) per-image rows -> (B, K, ...) rows ``index``."""
    batch = torch.arange(index.shape[0], device=index.device).unsqueeze(1)
    return x[batch, index]


@MODELS.register_module()
class CATSegHead(BaseDecodeHead):
    """CAT-Seg's cost-aggregation head (see the module docstring).

    Args:
        in_channels (int): D, CLIP's joint width (512 ViT-B/16, 768
            ViT-L/14): the dense features and class embeddings.
        channels (int): d, the cost-feature width (128).
        num_templates (int, optional): P, prompt templates of the text
            encoder (80 for ``templates='openai'``; CAT-Seg's released ViT
            configs use one, "A photo of a {} in the scene"). None
            (default): the segmentor fills in its text encoder's count (80
            for a head built alone).
        appearance_guidance_channels (int): width of the projected dense
            CLIP features given to the spatial aggregation (128; 0: none).
        text_guidance_channels (int): width of the projected class
            embeddings given to the class aggregation (128; 0: none).
        cost_embed (dict): config of the embedding step, built with
            ``in_channels=num_templates, out_channels=channels``
            (``CostEmbedding``, 7x7).
        aggregator (dict): config of the aggregator, built with
            ``embed_dims=channels``, ``appearance_dims`` and ``text_dims``
            (``CostAggregator``: 2 layers; its ``spatial`` and
            ``classwise`` sub-configs).
        decoder (dict): config of the decoder, built with
            ``in_channels=channels`` (``UpsamplingDecoder``: guidance from
            ViT width 768, [256, 128] -> [32, 16], stages [64, 32]).
        pad_len (int): CAT-Seg's fixed class-sequence length (256 in its
            code): shorter vocabularies are padded with learnable tokens in
            the class aggregation, longer ones keep the ``pad_len`` classes
            of highest cost (max over templates and positions) and the
            others get ``unselected_logit``. 0 keeps every class unpadded.
            Given to the class aggregation unless its config sets it.
        unselected_logit (float): logit of unselected classes (-100).
        class_chunk_size (int, optional): at inference, run the
            class-independent steps (spatial aggregation, decoder) on this
            many classes at a time (bounds memory for large vocabularies;
            the same numbers).
        num_classes (int): mmseg's bookkeeping only; the real class count
            comes from the text inputs of each call.
        loss_decode (dict): ``PixelBCELoss`` by default.
        ignore_index (int): label of ignored pixels (255; 65535 for the
            > 255-class datasets).
        align_corners (bool): of the resizes to label / input size.
    """

    #: the segmentor passes (C, P, D) per-template embeddings
    uses_template_embeddings = True

    def __init__(self,
                 in_channels: int = 512,
                 channels: int = 128,
                 num_templates: Optional[int] = None,
                 appearance_guidance_channels: int = 128,
                 text_guidance_channels: int = 128,
                 cost_embed: Optional[dict] = None,
                 aggregator: Optional[dict] = None,
                 decoder: Optional[dict] = None,
                 pad_len: int = 256,
                 unselected_logit: float = -100.0,
                 class_chunk_size: Optional[int] = None,
                 num_classes: int = 171,
                 loss_decode: Optional[dict] = None,
                 ignore_index: int = 255,
                 align_corners: bool = False,
                 init_cfg: Optional[dict] = None,
                 **kwargs):
        super().__init__(
            in_channels=in_channels, channels=channels,
            num_classes=num_classes, dropout_ratio=0.0,
            loss_decode=loss_decode or dict(type='PixelBCELoss'),
            ignore_index=ignore_index, align_corners=align_corners,
            init_cfg=init_cfg, **kwargs)
        del self.conv_seg  # one logit per class comes from the decoder
        if num_templates is None:
            num_templates = DEFAULT_NUM_TEMPLATES
        if num_templates < 1:
            raise OVSSConfigError(
                f'num_templates={num_templates} must be >= 1')
        if pad_len < 0:
            raise OVSSConfigError(f'pad_len={pad_len} must be >= 0 (0: '
                                  'no padding or truncation)')
        self.num_templates = int(num_templates)
        self.pad_len = int(pad_len)
        self.unselected_logit = float(unselected_logit)
        self.class_chunk_size = check_chunk_size(class_chunk_size,
                                                 'class_chunk_size')
        embed_cfg = {'type': 'CostEmbedding', **(cost_embed or {})}
        embed_cfg.setdefault('in_channels', self.num_templates)
        embed_cfg.setdefault('out_channels', channels)
        self.cost_embed = MODELS.build(embed_cfg)
        self.appearance_projection = nn.Sequential(
            nn.Conv2d(in_channels, appearance_guidance_channels, 3,
                      padding=1), nn.ReLU()) \
            if appearance_guidance_channels > 0 else None
        self.text_projection = nn.Sequential(
            nn.Linear(in_channels, text_guidance_channels), nn.ReLU()) \
            if text_guidance_channels > 0 else None
        agg_cfg = {'type': 'CostAggregator', **(aggregator or {})}
        agg_cfg.setdefault('embed_dims', channels)
        agg_cfg.setdefault('appearance_dims', appearance_guidance_channels)
        agg_cfg.setdefault('text_dims', text_guidance_channels)
        classwise = dict(agg_cfg.get('classwise') or {})
        classwise.setdefault('pad_len', self.pad_len)
        agg_cfg['classwise'] = classwise
        self.aggregator = MODELS.build(agg_cfg)
        dec_cfg = {'type': 'UpsamplingDecoder', **(decoder or {})}
        dec_cfg.setdefault('in_channels', channels)
        self.decoder = MODELS.build(dec_cfg)

    # ------------------------------------------------------------ steps
    def init_state(self, inputs: OpenVocabInputs) -> CostState:
        """Check the inputs and start the state."""
        visual, text = inputs.visual, inputs.text
        if not isinstance(visual, CLIPDenseFeatures):
            raise OVSSConfigError(
                f'{type(self).__name__} needs CLIPDenseFeatures from its '
                f'segmentor (CostVolumeSegmentor), got '
                f'{type(visual).__name__}')
        templates = text.template_embeddings
        if templates is None:
            raise OVSSConfigError(
                f'{type(self).__name__} needs per-template class embeddings;'
                ' the segmentor passes them when the head sets '
                'uses_template_embeddings = True')
        if visual.patches.shape[1] != self.in_channels or \
                templates.shape[-1] != self.in_channels:
            raise OVSSConfigError(
                f'the head was built for in_channels={self.in_channels} but '
                f'the dense features have {visual.patches.shape[1]} and the '
                f'class embeddings {templates.shape[-1]}: set in_channels to '
                "CLIP's joint width (512 for ViT-B/16, 768 for ViT-L/14)")
        if templates.shape[1] != self.num_templates:
            raise OVSSConfigError(
                f'the text encoder gives {templates.shape[1]} templates per '
                f'class but the head was built for num_templates='
                f'{self.num_templates}: make them agree')
        return CostState(visual=visual, text=text, templates=templates)

    def cost_volume(self, state: CostState) -> Tensor:
        """(B, K, P, h, w) cosine cost volume of ``state.templates``."""
        return cosine_cost_volume(state.visual.patches, state.templates)

    def select_classes(self, state: CostState) -> None:
        """CAT-Seg's truncation: with more than ``pad_len`` classes, keep
        the ``pad_len`` of highest cost (max over templates and positions)
        in each image (sets ``class_index`` and narrows ``cost`` and
        ``templates``)."""
        k = state.cost.shape[1]
        if self.pad_len <= 0 or k <= self.pad_len:
            return
        scores = state.cost.flatten(2).amax(dim=-1)  # (B, K)
        index = scores.topk(self.pad_len, dim=1).indices.sort(dim=1).values
        self.narrow_classes(state, index)

    def narrow_classes(self, state: CostState, index: Tensor) -> None:
        """Keep classes ``index`` (B, K') of the current ones (composes with
        an earlier selection)."""
        state.cost = gather_per_image(state.cost, index)
        if state.templates.dim() == 3:
            state.templates = gather_shared(state.templates, index)
        else:
            state.templates = gather_per_image(state.templates, index)
        if state.class_index is not None:
            index = gather_per_image(state.class_index, index)
        state.class_index = index

    def embed(self, cost: Tensor) -> Tensor:
        """(B, K, P, h, w) -> (B, K, d, h, w)."""
        return self.cost_embed(cost)

    def project_guidance(self, state: CostState) -> None:
        """Set the appearance, text and decoder guidance of ``state``."""
        b = state.batch_size
        if self.appearance_projection is not None:
            state.appearance_guidance = self.appearance_projection(
                state.visual.patches)
        if self.text_projection is not None:
            text = F.normalize(state.templates.mean(dim=-2), dim=-1)
            guidance = self.text_projection(text)
            if guidance.dim() == 2:
                guidance = guidance.unsqueeze(0).expand(b, -1, -1)
            state.text_guidance = guidance
        state.decoder_guidance = self.decoder.prepare_guidance(
            state.visual.guidance_maps())

    def inference_chunk(self) -> Optional[int]:
        return None if self.training else self.class_chunk_size

    def aggregate(self, cost_feature: Tensor, state: CostState) -> Tensor:
        """Spatial and class aggregation, (B, K, d, h, w)."""
        return self.aggregator(cost_feature, state.appearance_guidance,
                               state.text_guidance, self.inference_chunk())

    def decode(self, aggregated: Tensor, state: CostState) -> Tensor:
        """(B, K, d, h, w) -> (B, K, H', W') logits."""
        return self.decoder(aggregated, state.decoder_guidance,
                            self.inference_chunk())

    def restore_classes(self, logits: Tensor, state: CostState) -> Tensor:
        """(B, K, H', W') logits of the selected classes -> (B, C, H', W'),
        unselected classes at ``unselected_logit``."""
        if state.class_index is None:
            return logits
        b, _, h, w = logits.shape
        out = logits.new_full((b, state.num_classes, h, w),
                              self.unselected_logit)
        index = state.class_index[:, :, None, None].expand(-1, -1, h, w)
        return out.scatter(1, index, logits)

    # ---------------------------------------------------------- contract
    def forward_state(self, inputs: OpenVocabInputs) -> CostState:
        """Run every step; the returned state holds each intermediate."""
        state = self.init_state(inputs)
        state.cost = self.cost_volume(state)
        self.select_classes(state)
        state.cost_feature = self.embed(state.cost)
        self.project_guidance(state)
        state.aggregated = self.aggregate(state.cost_feature, state)
        logits = self.decode(state.aggregated, state)
        state.logits = self.restore_classes(logits, state)
        return state

    def forward(self, inputs: OpenVocabInputs) -> Tensor:
        """(B, C, 4h, 4w) logits of every class of the vocabulary."""
        return self.forward_state(inputs).logits

    def loss(self, inputs: OpenVocabInputs, batch_data_samples,
             train_cfg=None) -> dict:
        return self.loss_by_feat(self.forward(inputs), batch_data_samples)

    def loss_by_feat(self, seg_logits: Tensor, batch_data_samples) -> dict:
        """Losses of (B, C, H', W') logits resized to the label size."""
        seg_label = self._stack_batch_gt(batch_data_samples).squeeze(1)
        seg_logits = resize(seg_logits, size=seg_label.shape[-2:],
                            mode='bilinear', align_corners=self.align_corners)
        losses = {}
        decoders = self.loss_decode if isinstance(
            self.loss_decode, nn.ModuleList) else [self.loss_decode]
        for loss_decode in decoders:
            value = loss_decode(seg_logits, seg_label,
                                ignore_index=self.ignore_index)
            name = loss_decode.loss_name
            losses[name] = losses[name] + value if name in losses else value
        return losses

    def predict(self, inputs: OpenVocabInputs, batch_img_metas: List[dict],
                test_cfg=None) -> Tensor:
        """(B, C, H, W) sigmoid scores at the input size (the sigmoid comes
        before the resize, as in CAT-Seg's whole-image inference)."""
        return self.predict_by_feat(self.forward(inputs).sigmoid(),
                                    batch_img_metas)
