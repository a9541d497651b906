"""FreeCP: training-free class purification as a decode head.

Plugs into ``CLIPDenseSegmentor`` with any dense strategy: a baseline config
and its FreeCP config differ only in ``decode_head`` (and thresholds). The
method's steps live in :mod:`mmseg_ovss.freecp`; this module handles the
text side (templates or descriptions, Table 4) and the background rule.
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from mmseg.registry import MODELS
from torch import Tensor

from mmseg_ovss.clip.dense_head import DenseCLIPHead
from mmseg_ovss.clip.features import DenseCLIPFeatures, VocabularyEmbeddings
from mmseg_ovss.freecp.cam import query_activation_maps
from mmseg_ovss.freecp.descriptions import (description_class_embeddings,
                                            load_descriptions,
                                            template_class_embeddings)
from mmseg_ovss.freecp.pipeline import FreeCPWindowPipeline
from mmseg_ovss.utils.errors import OVSSConfigError

TEXT_SOURCES = ('templates', 'descriptions')


@MODELS.register_module()
class FreeCPHead(DenseCLIPHead):
    """FreeCP head (Chen et al., ICCV 2025; FACTS §3).

    Window maps are the purified refined maps of the foreground classes,
    in [0, 1] (the background channel is zero); after stitching,
    :meth:`class_scores` sets the background to ``1 - max_c`` when the
    vocabulary has one. Set the segmentor's ``prob_thd``/``area_thd`` off.

    Args:
        descriptions: description file (``data/descriptions/<vocab>.json``),
            or None to use templates wherever descriptions would be used.
        initial_text: text of the CAM queries, ``'templates'`` (default) or
            ``'descriptions'`` (Table 4 "Initial").
        ap_text: text the crops are matched against, ``'descriptions'``
            (default) or ``'templates'`` (Table 4 "AP").
        logit_scale: temperature of Eq. 1 (CLIP's 100).
        affinity_layers: blocks whose attention forms the affinity;
            ``'all_but_last'`` (authors) or a list of indices (e.g.
            ``[-9, -8, ..., -2]`` for CLIP-ES's last eight).
        **pipeline: options of
            :class:`mmseg_ovss.freecp.pipeline.FreeCPWindowPipeline`
            (thresholds, purification order, metrics, ...).
    """
    requires_cls_token = False

    def __init__(self,
                 descriptions: Optional[str] = None,
                 initial_text: str = 'templates',
                 ap_text: str = 'descriptions',
                 logit_scale: float = 100.0,
                 affinity_layers: Union[str, Sequence[int]] = 'all_but_last',
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
        self.descriptions = descriptions
        self.initial_text = initial_text
        self.ap_text = ap_text
        self.logit_scale = float(logit_scale)
        self.required_attention_layers = affinity_layers
        self.pipeline = FreeCPWindowPipeline(**pipeline)
        self._table = None
        self._cache: Dict[Tuple, Tuple] = {}

    # ------------------------------------------------------------- text side
    def _description_table(self):
        if self._table is None:
            self._table = load_descriptions(self.descriptions)
        return self._table

    def _text(self, vocab: VocabularyEmbeddings) -> Tuple:
        """(CAM queries, their classes, class embeddings for the crops),
        cached per vocabulary."""
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
            queries, owners = self._described_queries(
                vocab, described, missing)
        else:
            queries, owners = vocab.query_embeddings, vocab.query_to_class
        crop_text = described if self.ap_text == 'descriptions' \
            else templates
        self._cache = {key: (queries, owners.long(), crop_text)}
        return self._cache[key]

    @staticmethod
    def _described_queries(vocab, described, missing):
        """One description query per described foreground class; template
        queries (all synonyms) for the background and undescribed ones."""
        rows, owners = [], []
        q2c = vocab.query_to_class.tolist()
        for cls in range(vocab.num_classes):
            name = vocab.class_names[cls]
            if cls != vocab.background_class and name not in missing:
                rows.append(described[cls:cls + 1])
                owners.append(cls)
                continue
            picks = [q for q, owner in enumerate(q2c) if owner == cls]
            rows.append(vocab.query_embeddings[picks].to(described))
            owners += [cls] * len(picks)
        return torch.cat(rows), torch.tensor(owners, device=described.device)

    # ---------------------------------------------------------- image side
    def forward(self, features: DenseCLIPFeatures,
                vocab: VocabularyEmbeddings) -> Tensor:
        queries, owners, crop_text = self._text(vocab)
        query_maps = query_activation_maps(features.patch_tokens, queries,
                                           self.logit_scale)
        owners = owners.to(query_maps.device)
        foreground = [c for c in range(vocab.num_classes)
                      if c != vocab.background_class]
        layers = sorted(features.attn_weights)
        if not layers:
            raise OVSSConfigError(
                'FreeCPHead got no attention weights; the backbone must '
                'capture the layers in head.required_attention_layers')
        transition = self.pipeline.affinity(features.attn_weights, layers)
        purified = self.pipeline(
            query_maps, owners, foreground, transition,
            images=features.images, patch_size=features.patch_size,
            encode_image=features.encode_image,
            class_embeddings=crop_text)
        b, _, h, w = purified.shape
        maps = purified.new_zeros(b, vocab.num_classes, h, w)
        maps[:, foreground] = purified
        return maps

    def class_scores(self, maps: Tensor,
                     vocab: VocabularyEmbeddings) -> Tensor:
        """Background = 1 - max over the other classes (FACTS §3 step 6)."""
        bg = vocab.background_class
        if bg is None:
            return maps
        others = [c for c in range(maps.shape[1]) if c != bg]
        scores = maps.clone()
        scores[:, bg] = 1 - maps[:, others].amax(dim=1)
        return scores
