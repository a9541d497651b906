"""DCP-CLIP's decode head (Fig. 3): CAT-Seg's cost volume on the classes
that Dynamic Category Selection keeps, refined by text-guided alignment,
decoded by the spatial enhanced decoder, labels checked by tag validation.

Steps (each a method; every part can be switched off, so the ablation rows
of Tables III-VII are configs):

1. :meth:`~DCPCLIPHead.select_categories` (Eqs. 1-5,
   ``category_selection``): the K classes of each image; the cost volume and
   everything after it run on those only (training and inference). ``None``
   keeps every class.
2. cost volume over the selected classes and the 80 templates, conv
   embedding (Eq. 6; :class:`~mmseg_ovss.models.catseg.head.CATSegHead`);
3. CAT-Seg's aggregator, empty by default (``aggregator=dict(num_layers=0)``:
   DCP-CLIP's alignment and decoder take its place; a config can keep it);
4. :meth:`~DCPCLIPHead.align` (Eqs. 7-12, ``alignment``);
5. :meth:`~DCPCLIPHead.decode` (Eqs. 13-16, ``decoder``:
   ``SpatialEnhancedDecoder``, or CAT-Seg's ``UpsamplingDecoder``);
6. logits of the unselected classes = ``unselected_logit`` (-100, whose
   sigmoid score is ~0: lower than any selected class's score);
7. inference only: :class:`~.tag_validation.TagValidation` (Eq. 17,
   ``tag_validation``, off when None).

Loss: per-pixel binary cross-entropy over the selected classes of each image
(padding slots excluded), CAT-Seg's ``PixelBCELoss`` conventions
(``ignore_mode``, ``loss_weight``, ``loss_name``). Ground-truth classes the
selection misses are added (``training_gt='force'``) or their pixels get the
ignore label (``'ignore'``): negatives of every selected slot with
``ignore_mode='negative'`` (default), out of the loss with ``'exclude'``.
"""
from dataclasses import dataclass, fields
from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.models.catseg.compact_labels import compact_scores_labels
from mmseg_ovss.models.catseg.head import (DEFAULT_NUM_TEMPLATES,
                                           CATSegHead, CostState)
from mmseg_ovss.models.dcpclip.category_selection import (
    CategorySelection, DynamicCategorySelection, gather_classes,
    scatter_classes)
from mmseg_ovss.models.dcpclip.spatial_enhanced_decoder import \
    SpatialEnhancedDecoder
from mmseg_ovss.models.dcpclip.tag_validation import swap_compact_scores
from mmseg_ovss.models.segmentors.open_vocab import OpenVocabInputs
from mmseg_ovss.utils.errors import OVSSConfigError

ATTENTION_MAPS = ('cls', 'affinity')
TEXT_GRADIENTS = ('selected', 'all')


@dataclass
class DCPState(CostState):
    """:class:`CostState` plus DCP-CLIP's intermediate results.

    Attributes:
        selection: the :class:`CategorySelection` of the batch.
        aligned: (B, K, d, h, w) cost feature after text-guided alignment.
        slot_logits: (B, K, H', W') decoder logits of the packed classes.
        unselected_score: the score of an unselected class, set when the
            head returns slot scores (:meth:`DCPCLIPHead.view_scores`).
    """
    selection: Optional[CategorySelection] = None
    aligned: Optional[Tensor] = None
    slot_logits: Optional[Tensor] = None
    unselected_score: Optional[float] = None


LOSS_NORMALIZATIONS = ('image', 'batch')


def selected_pixel_bce(logits: Tensor, labels: Tensor, valid: Tensor,
                       ignore_index: int,
                       ignore_mode: str = 'negative',
                       normalization: str = 'batch') -> Tensor:
    """Mean per-pixel BCE of (B, K, H, W) slot logits against (B, H, W)
    slot labels, over the valid slots (B, K) only.

    ``'negative'``: ignored pixels are negatives of every valid slot, the
    mean runs over valid slots x pixels (CAT-Seg's convention restricted to
    the selected classes); ``'exclude'``: over valid slots x valid pixels.

    ``normalization``: ``'batch'`` divides the batch's sum by the batch's
    count of terms; ``'image'`` averages each image's mean over the batch.
    The two differ when images select different numbers of classes;
    ``'image'`` is what the authors' setting computes (one image per GPU,
    gradients averaged over the GPUs) and it does not depend on how a total
    batch is split over processes.
    """
    if normalization not in LOSS_NORMALIZATIONS:
        raise OVSSConfigError(
            f'loss normalization={normalization!r} is not one of '
            f'{LOSS_NORMALIZATIONS}')
    logits = logits.float()
    pixel_valid = labels != ignore_index
    index = torch.where(pixel_valid, labels, torch.zeros_like(labels))
    positive = logits.gather(1, index.unsqueeze(1)).squeeze(1)
    slot = valid[:, :, None, None].to(logits.dtype)
    softplus = (F.softplus(logits) * slot).sum(dim=1)  # (B, H, W)
    pixels = labels.shape[-2] * labels.shape[-1]
    if ignore_mode == 'negative':
        total = softplus.flatten(1).sum(1) - \
            (positive * pixel_valid).flatten(1).sum(1)
        count = valid.sum(1) * pixels
    else:
        total = ((softplus - positive) * pixel_valid).flatten(1).sum(1)
        count = pixel_valid.flatten(1).sum(1) * valid.sum(1)
    if normalization == 'batch':
        return total.sum() / count.sum().clamp(min=1)
    return (total / count.clamp(min=1)).mean()


@MODELS.register_module()
class DCPCLIPHead(CATSegHead):
    """DCP-CLIP's head (see the module doc).

    Args:
        category_selection (dict, optional): ``DynamicCategorySelection``
            config (theta 0.5, union, complement suppression, forced GT);
            None: every class.
        alignment (dict, optional): ``TextGuidedAlignment`` config, built
            with ``embed_dims=in_channels`` and ``cost_dims=channels``;
            None: no alignment.
        decoder (dict): ``SpatialEnhancedDecoder`` config (built with
            ``in_channels=channels``, ``cost_channels=num_templates`` and
            ``attention_channels`` from ``attention_maps``), or CAT-Seg's
            ``UpsamplingDecoder``.
        tag_validation (dict, optional): ``TagValidation`` config; None off.
        attention_maps (str): how the CLIP attention weights the segmentor
            returns become the decoder's maps: 'cls' (each layer's (B, h*w)
            [CLS]-to-patch weights as one channel; the segmentor's
            ``attention_form='cls'``) or 'affinity' (each layer's
            head-averaged patch-to-patch weights as h*w channels;
            ``attention_form='full'``).
        num_attention_layers (int): layers of attention weights the
            segmentor returns (its ``attention_layers``; 2 by default, the
            guidance blocks), to size the decoder (with 'affinity': times
            ``grid_size[0] * grid_size[1]``). Not used when the decoder
            does not fuse attention (``fuse_attention=False`` or
            ``swin=False``, or CAT-Seg's decoder).
        grid_size (tuple): the patch grid for 'affinity' (24, 24).
        loss_normalization (str): ``'image'`` (default: the mean over the
            batch of each image's BCE mean, as the authors' one image per
            GPU; the same for any split of a total batch over processes) or
            ``'batch'`` (the batch's BCE sum over its count of terms); see
            :func:`selected_pixel_bce`.
        text_gradients (str): how a trainable text tower gets its
            gradients in training: ``'selected'`` (default) embeds the
            vocabulary without gradients for Dynamic Category Selection
            (Eqs. 1-5, whose scores carry no gradient) and re-embeds with
            gradients the prompts of the classes in the batch's packed
            slots (selected, forced ground truth, padding), the only ones
            the loss reads (:meth:`select_categories`): the same loss and
            gradients as ``'all'``, which embeds every class with
            gradients. Without category selection every class reaches the
            loss: ``'all'`` either way.
        aggregator (dict): CAT-Seg's aggregator; ``dict(num_layers=0)``
            (default) leaves it out.
        pad_len (int): CAT-Seg's class truncation, used only without
            category selection (0: off, default).
        appearance_guidance_channels, text_guidance_channels (int): of
            CAT-Seg's aggregator (0 by default: no aggregator).
        **kwargs: the other :class:`CATSegHead` arguments (``in_channels``,
            ``channels``, ``num_templates``, ``cost_embed``,
            ``unselected_logit``, ``loss_decode``, ``ignore_index``,
            ``class_chunk_size``: at inference the SA branch and the
            decoder run on this many classes at a time, ...).
    """

    def __init__(self,
                 category_selection: Optional[dict] = dict(
                     type='DynamicCategorySelection'),
                 alignment: Optional[dict] = dict(type='TextGuidedAlignment'),
                 decoder: Optional[dict] = None,
                 tag_validation: Optional[dict] = None,
                 attention_maps: str = 'cls',
                 num_attention_layers: int = 2,
                 grid_size: Sequence[int] = (24, 24),
                 loss_normalization: str = 'image',
                 text_gradients: str = 'selected',
                 aggregator: Optional[dict] = None,
                 pad_len: int = 0,
                 appearance_guidance_channels: int = 0,
                 text_guidance_channels: int = 0,
                 **kwargs):
        if attention_maps not in ATTENTION_MAPS:
            raise OVSSConfigError(
                f'DCPCLIPHead attention_maps={attention_maps!r} is not one '
                f'of {ATTENTION_MAPS}')
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise OVSSConfigError(
                f'DCPCLIPHead loss_normalization={loss_normalization!r} is '
                f'not one of {LOSS_NORMALIZATIONS}')
        if text_gradients not in TEXT_GRADIENTS:
            raise OVSSConfigError(
                f'DCPCLIPHead text_gradients={text_gradients!r} is not one '
                f'of {TEXT_GRADIENTS}')
        channels = kwargs.get('channels', 128)
        in_channels = kwargs.get('in_channels', 512)
        num_templates = kwargs.get('num_templates')
        if num_templates is None:
            num_templates = DEFAULT_NUM_TEMPLATES
        attention_channels = int(num_attention_layers) * (
            1 if attention_maps == 'cls' else int(grid_size[0] * grid_size[1]))
        decoder = dict(decoder or dict(type='SpatialEnhancedDecoder'))
        enhanced = decoder.get('type', 'SpatialEnhancedDecoder') in (
            'SpatialEnhancedDecoder', SpatialEnhancedDecoder)
        if not enhanced or not decoder.get('fuse_attention', True) or \
                not decoder.get('swin', True):
            attention_channels = 0
        if enhanced:
            decoder.setdefault('type', 'SpatialEnhancedDecoder')
            decoder.setdefault('cost_channels', num_templates)
            decoder.setdefault('attention_channels', attention_channels)
            encoder = list(decoder.get('encoder_channels', (512, 768, 768)))
            encoder[0] = in_channels
            decoder.setdefault('encoder_channels', tuple(encoder))
        # CATSegHead builds its own decoder type from the config; the
        # decoder is built here (any registered type) and replaces it
        super().__init__(
            aggregator=aggregator if aggregator is not None else dict(
                num_layers=0),
            decoder=dict(channels=(16, ), guidance_channels=(0, ),
                         guidance_proj_channels=(0, )),
            pad_len=pad_len,
            appearance_guidance_channels=appearance_guidance_channels,
            text_guidance_channels=text_guidance_channels, **kwargs)
        decoder.setdefault('type', 'UpsamplingDecoder')
        decoder.setdefault('in_channels', channels)
        self.decoder = MODELS.build(decoder)
        if not len(getattr(self.aggregator, 'layers', (None, ))):
            # the guidance projections serve the aggregator only (unused
            # parameters would also stop DistributedDataParallel)
            self.appearance_projection = None
            self.text_projection = None
        self.attention_maps = attention_maps
        self.loss_normalization = loss_normalization
        self.text_gradients = text_gradients
        self.attention_channels = attention_channels
        self.category_selection = MODELS.build(category_selection) \
            if category_selection else None
        if alignment:
            alignment = dict(alignment)
            alignment.setdefault('embed_dims', in_channels)
            alignment.setdefault('cost_dims', channels)
            self.alignment = MODELS.build(alignment)
        else:
            self.alignment = None
        self.tag_validation = MODELS.build(tag_validation) \
            if tag_validation else None

    @property
    def embeds_selected_text(self) -> bool:
        """The segmentor's cue (``text_gradients='selected'``): in this
        forward the text tower's gradients go through the classes of the
        packed slots only (training with category selection)."""
        return self.training and self.text_gradients == 'selected' and \
            self.category_selection is not None

    # ------------------------------------------------------------ steps
    def init_state(self, inputs: OpenVocabInputs) -> DCPState:
        state = super().init_state(inputs)
        return DCPState(**{f.name: getattr(state, f.name)
                           for f in fields(state)})

    def select_categories(self, state: DCPState,
                          gt_classes: Optional[Tensor] = None) -> None:
        """Eqs. 1-5: set ``state.selection`` and narrow ``templates`` to the
        selected classes of each image (before the cost volume is built).

        Text embeddings computed without gradients
        (``text_gradients='selected'``) get the text tower's gradients here
        on the classes of the packed slots, ``selection.index`` (selected
        and forced ground-truth classes, and the padding slots' classes,
        which run through the head too: CAT-Seg's class aggregation, when
        kept, attends over them). Everything after reads only those rows:
        the cost volume and the text guidance (``templates``), Eq. 7's
        class embeddings and [CLS] logits (recomputed from the new rows,
        the same values), the decoder; the loss reads the valid slots. The
        selection's own scores (Eqs. 1-5) carry no gradient, and
        ``selection.image_scores`` (a softmax over all classes, kept for
        reference) is not used with gradients."""
        visual, text = state.visual, state.text
        batch, classes = state.batch_size, state.num_classes
        if self.category_selection is None:
            logits = DynamicCategorySelection.class_logits(
                visual.cls, text.embeddings, text.logit_scale)
            selection = CategorySelection.everything(
                batch, classes, device=visual.patches.device)
            selection.image_logits = logits
            state.selection = selection
            return
        if gt_classes is not None and gt_classes.shape != (batch, classes):
            raise OVSSConfigError(
                f'ground-truth classes {tuple(gt_classes.shape)} do not '
                f'match the batch and vocabulary ({batch}, {classes})')
        selection = self.category_selection(
            visual.patches, visual.cls, text.embeddings, text.logit_scale,
            gt_classes=gt_classes if self.training else None)
        state.selection = selection
        if text.embed_classes is not None:
            text = state.text = text.with_gradients(
                torch.unique(selection.index))
            selection.image_logits = DynamicCategorySelection.class_logits(
                visual.cls, text.embeddings, text.logit_scale)
            state.templates = text.template_embeddings
        state.templates = state.templates[selection.index]
        state.class_index = selection.index

    def truncate_classes(self, state: DCPState) -> None:
        """Without category selection: CAT-Seg's ``pad_len`` truncation
        (when on), recorded as a selection."""
        super().select_classes(state)
        if state.class_index is None:
            return
        selection = state.selection
        index = state.class_index
        mask = torch.zeros_like(selection.mask).scatter(1, index, True)
        state.selection = CategorySelection(
            mask=mask, index=index, valid=torch.ones_like(index,
                                                          dtype=torch.bool),
            image_logits=selection.image_logits)

    def project_guidance(self, state: DCPState) -> None:
        """CAT-Seg's aggregator guidance when a config keeps the aggregator
        (the spatial enhanced decoder prepares its own encoder features)."""
        if not isinstance(self.decoder, SpatialEnhancedDecoder):
            super().project_guidance(state)
            return
        if self.appearance_projection is not None:
            state.appearance_guidance = self.appearance_projection(
                state.visual.patches)
        if self.text_projection is not None:
            text = F.normalize(state.templates.mean(dim=-2), dim=-1)
            guidance = self.text_projection(text)
            if guidance.dim() == 2:
                guidance = guidance.unsqueeze(0).expand(
                    state.batch_size, -1, -1)
            state.text_guidance = guidance

    def align(self, state: DCPState) -> Tensor:
        """Eqs. 7-12 on the (aggregated) cost feature."""
        if self.alignment is None:
            return state.aggregated
        selection = state.selection
        text = state.text.embeddings[selection.index] \
            if state.class_index is not None else \
            state.text.embeddings.unsqueeze(0).expand(
                state.batch_size, -1, -1)
        logits = gather_classes(selection.image_logits, selection.index) \
            if state.class_index is not None else selection.image_logits
        return self.alignment(state.aggregated, state.visual.patches,
                              text.to(state.aggregated.dtype),
                              logits.to(state.aggregated.dtype),
                              selection.valid,
                              class_chunk_size=self.inference_chunk())

    def attention_input(self, state: DCPState) -> Optional[Tensor]:
        """(B, a, h, w) attention-weight maps for the decoder, or None."""
        if not self.attention_channels:
            return None
        visual = state.visual
        maps = [visual.attention[i] for i in sorted(visual.attention)]
        h, w = visual.grid
        if not maps:
            raise OVSSConfigError(
                'DCPCLIPHead num_attention_layers > 0 but the segmentor '
                'returns no attention weights: set its attention_layers')
        out = []
        for weights in maps:
            if self.attention_maps == 'cls':
                if weights.dim() != 2:
                    raise OVSSConfigError(
                        "attention_maps='cls' needs (B, h*w) weights: set "
                        "the segmentor's attention_form='cls'")
                out.append(weights.view(-1, 1, h, w))
            else:
                if weights.dim() != 4:
                    raise OVSSConfigError(
                        "attention_maps='affinity' needs (B, heads, N, N) "
                        "weights: set the segmentor's attention_form='full'")
                patches = weights.mean(dim=1)[:, -h * w:, -h * w:]
                out.append(patches.transpose(1, 2).reshape(-1, h * w, h, w))
        maps = torch.cat(out, dim=1)
        if maps.shape[1] != self.attention_channels:
            raise OVSSConfigError(
                f'the segmentor gives {maps.shape[1]} attention maps but '
                f'the head was built for {self.attention_channels}: set '
                'num_attention_layers to the number of attention_layers '
                '(and grid_size to the patch grid with affinity)')
        return maps.to(state.cost.dtype)

    def decode(self, aligned: Tensor, state: DCPState) -> Tensor:
        """(B, K, d, h, w) -> (B, K, H', W') logits."""
        if not isinstance(self.decoder, SpatialEnhancedDecoder):
            return super().decode(aligned, state)
        visual = state.visual
        encoder = [visual.patches, *visual.guidance_maps()]
        return self.decoder(aligned, state.cost, encoder,
                            self.attention_input(state),
                            class_chunk_size=self.inference_chunk())

    def restore_classes(self, logits: Tensor, state: DCPState) -> Tensor:
        """(B, K, H', W') -> (B, C, H', W'), ``unselected_logit`` for the
        classes an image did not select (and its padding slots)."""
        if state.class_index is None:
            return logits
        return scatter_classes(logits, state.selection, state.num_classes,
                               self.unselected_logit)

    # ---------------------------------------------------------- contract
    def forward_state(self, inputs: OpenVocabInputs,
                      gt_classes: Optional[Tensor] = None) -> DCPState:
        state = self.init_state(inputs)
        self.select_categories(state, gt_classes)
        state.cost = self.cost_volume(state)
        if self.category_selection is None:
            self.truncate_classes(state)
        state.cost_feature = self.embed(state.cost)
        if len(getattr(self.aggregator, 'layers', (None, ))):
            self.project_guidance(state)
            state.aggregated = self.aggregate(state.cost_feature, state)
        else:
            state.aggregated = state.cost_feature
            if not isinstance(self.decoder, SpatialEnhancedDecoder):
                state.decoder_guidance = self.decoder.prepare_guidance(
                    state.visual.guidance_maps())
        state.aligned = self.align(state)
        state.slot_logits = self.decode(state.aligned, state)
        state.logits = self.restore_classes(state.slot_logits, state)
        return state

    def loss(self, inputs: OpenVocabInputs, batch_data_samples,
             train_cfg=None) -> dict:
        """BCE over the selected classes of each image."""
        labels = self._stack_batch_gt(batch_data_samples).squeeze(1)
        classes = inputs.text.num_classes
        present = self.present_classes(labels, classes)
        state = self.forward_state(inputs, gt_classes=present)
        logits = resize(state.slot_logits, size=labels.shape[-2:],
                        mode='bilinear', align_corners=self.align_corners)
        slot_labels = self.slot_labels(labels, state.selection, classes)
        losses = {}
        decoders = self.loss_decode if isinstance(
            self.loss_decode, nn.ModuleList) else [self.loss_decode]
        for loss_decode in decoders:
            value = getattr(loss_decode, 'loss_weight', 1.0) * \
                selected_pixel_bce(
                    logits, slot_labels, state.selection.valid,
                    self.ignore_index,
                    getattr(loss_decode, 'ignore_mode', 'negative'),
                    self.loss_normalization)
            name = loss_decode.loss_name
            losses[name] = losses[name] + value if name in losses else value
        return losses

    def present_classes(self, labels: Tensor, num_classes: int) -> Tensor:
        """(B, C) bool: the classes in each (B, H, W) label map."""
        valid = (labels != self.ignore_index) & (labels >= 0) & \
            (labels < num_classes)
        index = torch.where(valid, labels,
                            torch.full_like(labels, num_classes))
        present = torch.zeros(labels.shape[0], num_classes + 1,
                              dtype=torch.bool, device=labels.device)
        present.scatter_(1, index.flatten(1), True)
        return present[:, :num_classes]

    def slot_labels(self, labels: Tensor, selection: CategorySelection,
                    num_classes: int) -> Tensor:
        """(B, H, W) class labels -> slot labels (position in the image's
        packed classes); unselected classes -> ``ignore_index``."""
        batch, width = selection.index.shape
        slots = torch.arange(width, device=labels.device).expand(batch, -1)
        slots = torch.where(selection.valid, slots, torch.full_like(
            slots, self.ignore_index))
        slot_of = torch.full((batch, num_classes), self.ignore_index,
                             dtype=torch.long, device=labels.device)
        slot_of.scatter_(1, selection.index, slots)
        valid = (labels != self.ignore_index) & (labels >= 0) & \
            (labels < num_classes)
        index = torch.where(valid, labels, torch.zeros_like(labels))
        mapped = slot_of.gather(1, index.flatten(1)).view_as(labels)
        return torch.where(valid, mapped,
                           torch.full_like(labels, self.ignore_index))

    def unselected_score(self) -> float:
        """The sigmoid score of an unselected class."""
        return float(torch.tensor(float(self.unselected_logit)).sigmoid())

    def selected_scores(self, slot_scores: Tensor, state: DCPState) -> Tensor:
        """(B, K, H, W) slot scores -> (B, C, H, W) class scores, the
        unselected classes at :meth:`unselected_score`.

        The resizes and the sigmoid run on the K selected classes before
        this (a constant map stays constant under bilinear resizing), so
        only this fill touches all C classes."""
        if state.class_index is None:
            return slot_scores
        return scatter_classes(slot_scores, state.selection,
                               state.num_classes, self.unselected_score())

    def validate_tags(self, scores: Tensor, features: Tensor, text,
                      candidate_mask: Optional[Tensor] = None) -> Tensor:
        """Tag validation (Eq. 17) of (B, C, H, W) scores with (B, D, h, w)
        dense CLIP features and the ``ClassEmbeddings`` ``text`` (no-op
        when ``tag_validation`` is None). ``candidate_mask`` (B, C): the
        classes re-scoring may choose with ``candidates='selected'``."""
        if self.tag_validation is None:
            return scores
        return self.tag_validation(scores, features, text.embeddings,
                                   text.class_names,
                                   candidate_mask=candidate_mask)

    def validate_compact(self, scores: Tensor,
                         selection: CategorySelection, features: Tensor,
                         text, candidate_mask: Optional[Tensor] = None,
                         regions: Optional[Sequence[tuple]] = None
                         ) -> Tuple[Tensor, CategorySelection]:
        """:meth:`validate_tags` on (B, 1 + K, H, W) compact scores (channel
        0 the map every unselected class shares, then the slots of
        ``selection``; :mod:`~mmseg_ovss.models.catseg.compact_labels`):
        the same decision (:meth:`TagValidation.decide` on the labels of
        the argmax over all C classes), applied by
        :func:`~.tag_validation.swap_compact_scores`, which gives the old
        and new classes of relabelled pixels channels of their own. Filled
        to all C classes, the result is what :meth:`validate_tags` returns
        on the filled scores; no (B, C, H, W) tensor is built.

        ``regions`` (one ``(top, bottom, left, right)`` per image): each
        image is validated alone on that part (the unpadded region under
        the ensemble), as :meth:`validate_tags` on ``scores[i:i + 1, :,
        top:bottom, left:right]`` with ``features[i:i + 1]``; None: the
        whole batch at once.

        Returns the (B, 1 + K', H, W) scores and their selection."""
        if self.tag_validation is None:
            return scores, selection
        labels = compact_scores_labels(scores, selection)
        decide = partial(self.tag_validation.decide,
                         text=text.embeddings, class_names=text.class_names)
        if regions is None:
            validated = decide(labels, features,
                               candidate_mask=candidate_mask)
        else:
            validated = labels.clone()
            for i, (top, bottom, left, right) in enumerate(regions):
                part = decide(
                    labels[i:i + 1, top:bottom, left:right],
                    features[i:i + 1], candidate_mask=None
                    if candidate_mask is None else candidate_mask[i:i + 1])
                if part is not None:
                    validated[i:i + 1, top:bottom, left:right] = part
        if validated is None:
            return scores, selection
        return swap_compact_scores(scores, selection, labels, validated)

    def view_scores(self, inputs: OpenVocabInputs, size) -> tuple:
        """(scores, state) of a batch of views for CAT-Seg's ensemble:
        logits resized to ``size``, then the sigmoid (CAT-Seg's order), on
        the selected classes only: (V, K, *size) slot scores when the head
        selects classes (the segmentor fuses them on the union of each
        image's view classes, filling ``state.unselected_score``), else
        (V, C, *size). No tag validation: the segmentor validates the fused
        label map once."""
        state = self.forward_state(inputs)
        state.unselected_score = self.unselected_score()
        slots = resize(state.slot_logits, size=size, mode='bilinear',
                       align_corners=self.align_corners).sigmoid()
        return slots, state

    def predict_slots(self, inputs: OpenVocabInputs,
                      batch_img_metas: List[dict]) -> tuple:
        """((B, K, H, W) sigmoid scores of the selected slots at the input
        size, state), before the fill and tag validation."""
        state = self.forward_state(inputs)
        return self.predict_by_feat(state.slot_logits.sigmoid(),
                                    batch_img_metas), state

    def predict(self, inputs: OpenVocabInputs, batch_img_metas: List[dict],
                test_cfg=None) -> Tensor:
        """(B, C, H, W) sigmoid scores at the input size, tag-validated
        (the sigmoid and the resize run on the selected classes)."""
        slots, state = self.predict_slots(inputs, batch_img_metas)
        return self.validate_tags(self.selected_scores(slots, state),
                                  state.visual.patches, state.text,
                                  state.selection.mask)
