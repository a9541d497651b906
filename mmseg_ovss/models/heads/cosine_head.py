"""Cosine-similarity head of the training-free dense-CLIP baselines.

Head interface (shared with ``FreeCPHead``; base class
:class:`mmseg_ovss.clip.dense_head.DenseCLIPHead`)::

    head.required_attention_layers  # blocks whose vanilla attention to capture
    head.requires_cls_token         # fill features.cls_token
    head.num_output_maps(vocab)     # C, channels of the window maps
    head(features: DenseCLIPFeatures, vocab: VocabularyEmbeddings)
        -> (B, C, h, w)             # per window, batched over B windows
    head.class_scores(maps (N, C, H, W), vocab)
        -> (N, num_classes, H, W)   # after stitching, per pixel
    head.pixelwise_scores           # class_scores reads one pixel at a time
    head.predict((features, vocab), batch_img_metas, test_cfg)
        -> (B, C, H, W)             # mmseg's decode-head predict: the
                                    # window maps at input size
    head.loss(...)                  # mmseg's: refused (training-free)

``CLIPDenseSegmentor`` calls the head once per batch of sliding windows,
stitches the maps (mmseg slide semantics: overlaps averaged), resizes them to
the original image, applies optional PAMR, then calls ``class_scores`` (on
bands of output rows) and the generic background rules (``prob_thd``,
``area_thd``). A baseline config and a FreeCP config therefore differ only in
``decode_head`` and thresholds.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor

from mmseg_ovss.clip.dense_head import DenseCLIPHead
from mmseg_ovss.clip.features import DenseCLIPFeatures, VocabularyEmbeddings
from mmseg_ovss.freecp.descriptions import (description_class_embeddings,
                                            described_queries,
                                            load_descriptions)
from mmseg_ovss.freecp.gt_vocabulary import full_vocabulary, restrict_rows
from mmseg_ovss.utils.errors import OVSSConfigError


def synonym_max(query_scores: Tensor, query_to_class: Tensor,
                num_classes: int) -> Tensor:
    """Max over each class's queries: (N, Q, H, W) -> (N, K, H, W)."""
    n, _, h, w = query_scores.shape
    index = query_to_class.to(query_scores.device).view(1, -1, 1, 1)
    out = query_scores.new_full((n, num_classes, h, w), float('-inf'))
    return out.scatter_reduce(
        1, index.expand_as(query_scores), query_scores, reduce='amax')


QUERY_SOURCES = ('templates', 'descriptions')


@MODELS.register_module()
class CosineSimilarityHead(DenseCLIPHead):
    """Patch-text cosine similarity with a temperature (SCLIP lineage).

    Window maps are the raw cosines cos(f_p, t_q) for every query q (each
    synonym is a query). After stitching, class scores are
    ``max_{q in c} softmax_q(tau * cos)``: a softmax over all queries, then
    the max over a class's synonyms (SCLIP's code, ``wangf3014/SCLIP``
    clip_segmentor.py, followed by NACLIP, ClearCLIP and ProxyCLIP).

    Args:
        logit_scale (float): tau (40 by default; SCLIP 65 on VOC21, 50 on
            PC60 / COCO-Object; ClearCLIP and MaskCLIP 50).
        queries (str): the text of the queries: ``'templates'`` (default:
            each synonym under the prompt templates) or ``'descriptions'``:
            one query per described foreground class, the normalised mean
            of its raw description sentences (FreeCP Table 4, the
            "Baseline" rows with Vicuna / GPT-3.5 as "Initial" text); the
            background and undescribed classes keep their template queries
            (undescribed ones with a warning).
        descriptions: the description file (or ``dict(path=...,
            deduplicate=...)``, see :mod:`mmseg_ovss.freecp.descriptions`)
            ``queries='descriptions'`` reads.
    """

    def __init__(self, logit_scale: float = 40.0, queries: str = 'templates',
                 descriptions=None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if logit_scale <= 0:
            raise OVSSConfigError(
                f'logit_scale must be positive, got {logit_scale}')
        if queries not in QUERY_SOURCES:
            raise OVSSConfigError(
                f'CosineSimilarityHead queries={queries!r} is not one of '
                f'{QUERY_SOURCES}')
        if queries == 'descriptions' and descriptions is None:
            raise OVSSConfigError(
                "CosineSimilarityHead queries='descriptions' needs a "
                "description file: set descriptions='data/descriptions/"
                "<vocab>.json' or queries='templates'")
        self.logit_scale = float(logit_scale)
        self.queries = queries
        self.descriptions = descriptions
        self._table = None
        self._cache = {}

    def query_text(self, vocab: VocabularyEmbeddings
                   ) -> Tuple[Tensor, Tensor]:
        """(Q, D) query embeddings and their (Q,) classes. A vocabulary
        restricted to some classes (the ground-truth oracle) takes its rows
        from the full vocabulary's queries."""
        if self.queries == 'templates':
            return vocab.query_embeddings, vocab.query_to_class
        parent, class_ids = full_vocabulary(vocab)
        key = (id(parent), tuple(parent.class_names),
               parent.query_embeddings.data_ptr())
        if key not in self._cache:
            if self._table is None:
                self._table = load_descriptions(self.descriptions)
            foreground = [c for c in range(parent.num_classes)
                          if c != parent.background_class]
            described, missing = description_class_embeddings(
                parent, self._table, foreground)
            self._cache = {key: described_queries(parent, described,
                                                  set(missing))}
        queries, owners = self._cache[key]
        if class_ids is None:
            return queries, owners
        return restrict_rows(queries, owners, class_ids.to(owners.device))

    def num_output_maps(self, vocab: VocabularyEmbeddings) -> int:
        return self.query_text(vocab)[0].shape[0]

    def forward(self, features: DenseCLIPFeatures,
                vocab: VocabularyEmbeddings) -> Tensor:
        patches = F.normalize(features.patch_tokens.float(), dim=1)
        queries = self.query_text(vocab)[0].to(patches)
        return torch.einsum('bdhw,qd->bqhw', patches, queries)

    def class_scores(self, maps: Tensor,
                     vocab: VocabularyEmbeddings) -> Tensor:
        probs = (self.logit_scale * maps).softmax(dim=1)
        if self.queries == 'templates' and \
                probs.shape[1] == vocab.num_classes:
            return probs
        return synonym_max(probs, self.query_text(vocab)[1],
                           vocab.num_classes)
