"""Ground-truth vocabulary oracle of the training-free segmentors.

FreeCP (Chen et al., ICCV 2025) motivates class purification by restricting
each image's vocabulary to the classes of its annotation (Fig. 1b, Table 1
"Refine w/ GT"): the authors' code (``chenqi1126/FreeCP``,
``freecp_segmentor.py``, ``predict``/``forward_feature``) reads the image's
label file and keeps the CAM columns of those classes (the background
prompts always stay) before the softmax of Eq. 1. This is an analysis of an
upper bound, not open-vocabulary segmentation: it reads the ground truth at
inference.

:func:`annotated_classes` picks the classes of one image's annotation and
:func:`restrict_vocabulary` cuts a :class:`VocabularyEmbeddings` down to
them, without re-encoding any text: the result keeps a reference to the full
vocabulary (``parent``, ``class_ids``) so that a head can reuse what it
computed for the full vocabulary (FreeCP's description embeddings).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from mmseg_ovss.clip.features import VocabularyEmbeddings
from mmseg_ovss.utils.errors import OVSSDataError

ORACLE_WARNING = (
    'model.gt_vocabulary=True: each image is segmented with the vocabulary '
    'restricted to the classes of its ground-truth annotation (FreeCP Fig. '
    '1b / Table 1 "w/ GT"). This reads the labels at inference: an '
    'analysis of an upper bound, not an open-vocabulary result; never '
    'report it as one.')


@dataclass
class RestrictedVocabularyEmbeddings(VocabularyEmbeddings):
    """A vocabulary cut down to some classes of a full one.

    Attributes:
        parent: the full vocabulary.
        class_ids: (K',) long tensor, the parent's index of each class.
    """
    parent: Optional[VocabularyEmbeddings] = None
    class_ids: Optional[Tensor] = None


def full_vocabulary(vocab: VocabularyEmbeddings
                    ) -> Tuple[VocabularyEmbeddings, Optional[Tensor]]:
    """``(full vocabulary, class_ids)`` of a restricted vocabulary, or
    ``(vocab, None)`` for a full one."""
    parent = getattr(vocab, 'parent', None)
    if parent is None:
        return vocab, None
    return parent, vocab.class_ids


def restrict_rows(rows: Tensor, owners: Tensor, class_ids: Tensor
                  ) -> Tuple[Tensor, Tensor]:
    """Rows (queries) of the kept classes, owners renumbered.

    Args:
        rows: (Q, ...) one row per query of the full vocabulary.
        owners: (Q,) the full vocabulary's class of each row.
        class_ids: (K',) the kept classes, in their new order.
    Returns:
        ``rows[kept]`` and their owners as indices into ``class_ids``.
    """
    owners = owners.to(class_ids.device)
    size = int(max(int(owners.max()), int(class_ids.max())) + 1)
    position = torch.full((size, ), -1, dtype=torch.long,
                          device=class_ids.device)
    position[class_ids] = torch.arange(class_ids.numel(),
                                       device=class_ids.device)
    new_owner = position[owners]
    kept = new_owner >= 0
    return rows[kept.to(rows.device)], new_owner[kept]


def restrict_vocabulary(vocab: VocabularyEmbeddings, class_ids: Tensor
                        ) -> RestrictedVocabularyEmbeddings:
    """The vocabulary of the classes ``class_ids`` (sorted, distinct
    indices of ``vocab``): their queries, names and synonyms; the
    background index follows its class (None when it is not kept)."""
    parent, parent_ids = full_vocabulary(vocab)
    class_ids = class_ids.to(torch.long)
    ids = class_ids.tolist()
    queries, owners = restrict_rows(vocab.query_embeddings,
                                    vocab.query_to_class,
                                    class_ids.to(vocab.query_to_class.device))
    templates = None
    if vocab.template_embeddings is not None:
        templates, _ = restrict_rows(vocab.template_embeddings,
                                     vocab.query_to_class,
                                     class_ids.to(
                                         vocab.query_to_class.device))
    background = vocab.background_class
    background = ids.index(background) if background in ids else None
    if parent_ids is not None:  # a restriction of a restriction
        class_ids = parent_ids.to(class_ids.device)[class_ids]
    return RestrictedVocabularyEmbeddings(
        query_embeddings=queries,
        query_to_class=owners.to(vocab.query_to_class.device),
        class_names=[vocab.class_names[i] for i in ids],
        synonyms=[list(vocab.synonyms[i]) for i in ids],
        background_class=background,
        encode_text=vocab.encode_text,
        template_embeddings=templates,
        parent=parent,
        class_ids=class_ids)


def annotated_classes(data_sample, vocab: VocabularyEmbeddings,
                      ignore_index: int = 255) -> Optional[Tensor]:
    """Sorted (K',) ids of the classes in one image's annotation, the
    background class always included; None when the annotation names no
    class of the vocabulary (every pixel ignored: any vocabulary scores
    the same).

    Raises:
        OVSSDataError: the sample has no ``gt_sem_seg`` or a label outside
            the vocabulary.
    """
    if data_sample is None or 'gt_sem_seg' not in data_sample:
        raise OVSSDataError(
            'model.gt_vocabulary=True restricts each image\'s vocabulary to '
            'the classes of its annotation, but the data sample has no '
            'gt_sem_seg: keep LoadAnnotations (LoadCheckedAnnotations) in '
            'the test pipeline, or set model.gt_vocabulary=False')
    labels = data_sample.gt_sem_seg.data.unique()
    labels = labels[labels != ignore_index].long()
    num_classes = vocab.num_classes
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.numel():
        raise OVSSDataError(
            f'model.gt_vocabulary=True: the annotation holds label(s) '
            f'{outside.tolist()[:5]} outside the {num_classes}-class '
            f'vocabulary (ignore index {ignore_index}); use the class-name '
            'file of this dataset or fix the label files')
    if vocab.background_class is not None:
        labels = torch.cat([labels, labels.new_tensor(
            [vocab.background_class])]).unique()
    if labels.numel() == 0:
        return None
    return labels.sort().values
