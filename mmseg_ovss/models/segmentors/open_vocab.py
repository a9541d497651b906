"""Trainable open-vocabulary segmentors: CLIP towers, a text-taking head.

:class:`OpenVocabEncoderDecoder` is mmseg's ``EncoderDecoder`` with the two
registered CLIP towers of the package (``OpenCLIPViT`` as ``backbone``,
``OpenCLIPTextEncoder`` as ``text_encoder``) and a decode head that takes the
class embeddings of the active vocabulary with the image features. The
vocabulary is set at run time by ``DatasetVocabularyHook`` (the seen classes
in inductive zero-shot training, every class of the evaluated dataset in
validation and testing), so one model is evaluated on any vocabulary. The
methods built on it (ZegCLIP / CLIP-RC, CAT-Seg / DCP-CLIP) differ in how
they run the backbone (:meth:`extract_feat`) and in their heads.

The head contract (mmseg's ``BaseDecodeHead`` signatures, with
:class:`OpenVocabInputs` as ``inputs``):

- ``forward(inputs)``: the head's raw outputs (used by complexity
  analysis);
- ``loss(inputs, batch_data_samples, train_cfg) -> dict`` of losses;
- ``predict(inputs, batch_img_metas, test_cfg) -> (B, C, H, W)`` class
  scores at the input size, in the space where ``seen_score_offset``
  applies (sigmoid probabilities for ZegCLIP-style heads);
- ``uses_template_embeddings`` (bool attribute, optional): the head wants
  the (C, T, D) per-template embeddings too (CAT-Seg's cost volume); its
  config's ``num_templates`` is then filled in from the text encoder when
  left out (None);
- ``embeds_selected_text`` (bool attribute, optional): in this forward
  only classes the head selects reach the loss, and the head calls
  :meth:`ClassEmbeddings.with_gradients` on them (DCP-CLIP with category
  selection, ``text_gradients='selected'``): a trainable text tower then
  embeds the vocabulary without gradients and re-embeds with gradients
  only those classes.
"""
import dataclasses
import inspect
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import (Any, Callable, Dict, List, Optional, Sequence, Tuple,
                    Union)

import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.structures import PixelData
from torch import Tensor

from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.utils import add_prefix
from mmseg_ovss.clip.vocabulary import (Vocabulary, read_name_lists,
                                        split_synonyms)
from mmseg_ovss.utils.errors import OVSSConfigError


@dataclass
class ClassEmbeddings:
    """The text side of the active vocabulary, as a head receives it.

    Attributes:
        embeddings: (C, D) L2-normalised class embeddings (the normalised
            mean over templates, and over a class's names when it has
            several).
        template_embeddings: (C, T, D) per-template embeddings, each
            L2-normalised (averaged over a class's names), or None when the
            head does not ask for them.
        class_names: the dataset class names, in label order.
        seen_ids: indices (into this vocabulary) of the classes seen in
            training, or None when the stage has no zero-shot split.
        unseen_ids: the other classes of the split (empty in inductive
            training, where unseen names are unknown), or None.
        logit_scale: CLIP's learned temperature (exp of the stored log).
        embed_classes: set when ``embeddings`` and ``template_embeddings``
            were computed without the gradients of a trainable text tower:
            maps (M,) class ids to their (M, D) and (M, T, D) (or None)
            embeddings computed with gradients (see
            :meth:`with_gradients`); None when the embeddings carry every
            gradient they have.
    """
    embeddings: Tensor
    template_embeddings: Optional[Tensor]
    class_names: Tuple[str, ...]
    seen_ids: Optional[Tuple[int, ...]]
    unseen_ids: Optional[Tuple[int, ...]]
    logit_scale: Tensor
    embed_classes: Optional[Callable[[Tensor], Tuple[
        Tensor, Optional[Tensor]]]] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_gradients(self, class_ids: Tensor) -> 'ClassEmbeddings':
        """These embeddings with the text tower's gradients on the rows
        ``class_ids`` ((M,) distinct ids); themselves when they already
        carry their gradients (``embed_classes`` is None).

        The values stay those computed without gradients (a row is ``e +
        (g - g.detach())``, ``g`` re-embedded with gradients): what was
        selected from them is what the loss sees, and the gradient of a
        loss that reads only rows ``class_ids`` is the one of embedding the
        whole vocabulary with gradients."""
        if self.embed_classes is None:
            return self
        rows, template_rows = self.embed_classes(class_ids)
        return dataclasses.replace(
            self, embed_classes=None,
            embeddings=replace_rows(self.embeddings, class_ids, rows),
            template_embeddings=None if self.template_embeddings is None
            else replace_rows(self.template_embeddings, class_ids,
                              template_rows))


def replace_rows(values: Tensor, index: Tensor, rows: Tensor) -> Tensor:
    """``values`` with rows ``index`` (dim 0) carrying the gradients of
    ``rows`` and keeping their own values."""
    rows = values[index] + (rows - rows.detach()).to(values.dtype)
    return values.index_copy(0, index, rows)


@dataclass
class OpenVocabInputs:
    """What an open-vocabulary head gets: ``visual`` is what the
    segmentor's :meth:`~OpenVocabEncoderDecoder.extract_feat` returned
    (method-specific), ``text`` the class embeddings."""
    visual: Any
    text: ClassEmbeddings


#: ``class_name_synonyms`` values of :class:`OpenVocabEncoderDecoder`
SYNONYM_RULES = ('whole', 'first', 'all')


def read_class_name_map(mapping: Union[None, str, dict]
                        ) -> Dict[str, Tuple[str, ...]]:
    """Dataset class name -> prompt names, from a dict or a JSON file
    (``{"pottedplant": "potted plant", "tvmonitor": ["tv", "monitor"]}``)."""
    return read_name_lists(mapping, 'class_name_map',
                           'dataset class names to a prompt name')


@MODELS.register_module()
class OpenVocabEncoderDecoder(EncoderDecoder):
    """mmseg ``EncoderDecoder`` with CLIP towers and a text-taking head.

    Args:
        backbone (dict): the image tower, ``OpenCLIPViT`` by default (its
            freeze policy and prompts say what trains).
        decode_head (dict): a head with the contract of this module's
            docstring.
        text_encoder (dict): the text tower, ``OpenCLIPTextEncoder`` by
            default (``templates``, ``freeze``).
        clip (dict, optional): CLIP weights both towers load (``model_name``,
            ``pretrained``, ``checkpoint``, ``random_init``, ...), filled
            into ``backbone`` and ``text_encoder`` where they do not set a
            key, as mmseg's ``pretrained=`` fills a backbone.
        class_names (list | str, optional): the vocabulary used until
            ``DatasetVocabularyHook`` sets the stage's (a list or a
            class-name file); needed only without the hook (e.g. a FLOPs
            count or a benchmark).
        class_name_map (dict | str, optional): dataset class name -> the
            name(s) put in the prompts (a dict or a JSON file); classes not
            in the map use their dataset name.
        class_name_synonyms (str): how a dataset name that lists synonyms
            (``'building, edifice'``, as ADE-847 and PASCAL Context 459
            do) becomes prompt names, for classes not in
            ``class_name_map``: ``'whole'`` (default) the name as written,
            in one prompt; ``'first'`` the text before the first ``', '``
            (CAT-Seg's ``get_text_embeds`` in
            ``cat_seg/modeling/transformer/cat_seg_predictor.py``, which
            trains and tests on it); ``'all'`` every synonym, their
            embeddings averaged (CAT-Seg's ``class_embeddings`` and the
            training-free class-name files).
        seen_score_offset (float): subtracted from the scores of the seen
            classes at inference when the stage has unseen classes
            (ZegCLIP's and CLIP-RC's inductive calibration: 0.1); 0 turns
            it off.
        train_cfg, test_cfg, data_preprocessor, init_cfg: as mmseg's
            ``EncoderDecoder`` (``test_cfg.mode`` one of
            :attr:`test_modes`: 'whole' or 'slide' here; a subclass may add
            its own inference modes).
    """
    #: ``test_cfg.mode`` values this segmentor runs
    test_modes: Tuple[str, ...] = ('slide', 'whole')

    def __init__(self,
                 backbone: dict,
                 decode_head: dict,
                 text_encoder: Optional[dict] = None,
                 clip: Optional[dict] = None,
                 class_names: Union[None, str, Sequence[str]] = None,
                 class_name_map: Union[None, str, dict] = None,
                 class_name_synonyms: str = 'whole',
                 seen_score_offset: float = 0.0,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        # num_classes / out_channels follow the run-time vocabulary, so
        # EncoderDecoder's own init (which copies them from the head) does
        # not apply
        BaseSegmentor.__init__(self, data_preprocessor=data_preprocessor,
                               init_cfg=init_cfg)
        backbone = dict(backbone)
        text_encoder = dict(text_encoder or {})
        backbone.setdefault('type', 'OpenCLIPViT')
        text_encoder.setdefault('type', 'OpenCLIPTextEncoder')
        for key, value in dict(clip or {}).items():
            backbone.setdefault(key, value)
            text_encoder.setdefault(key, value)
        self.backbone = MODELS.build(backbone)
        self.text_encoder = MODELS.build(text_encoder)
        self.decode_head = MODELS.build(
            self.head_with_templates(decode_head))
        self.align_corners = getattr(self.decode_head, 'align_corners',
                                     False)
        self.neck = None
        self.auxiliary_head = None
        self.train_cfg = train_cfg
        self.test_cfg = ConfigDict(test_cfg or dict(mode='whole'))
        self.test_cfg.setdefault('mode', 'whole')
        if self.test_cfg.mode not in self.test_modes:
            raise OVSSConfigError(
                f'{type(self).__name__}: test_cfg.mode must be one of '
                f'{self.test_modes}, got {self.test_cfg.mode!r}')
        self.seen_score_offset = float(seen_score_offset)
        if not 0.0 <= self.seen_score_offset < 1.0:
            raise OVSSConfigError(
                f'seen_score_offset={seen_score_offset!r} must be in [0, 1) '
                '(0.1 in ZegCLIP and CLIP-RC inductive testing, 0 off)')
        self.class_name_map = read_class_name_map(class_name_map)
        if class_name_synonyms not in SYNONYM_RULES:
            raise OVSSConfigError(
                f'class_name_synonyms={class_name_synonyms!r} must be one '
                f'of {SYNONYM_RULES}')
        self.class_name_synonyms = class_name_synonyms
        self.dataset_classes: Optional[Tuple[str, ...]] = None
        self.zero_shot_split: Optional[Tuple[tuple, tuple]] = None
        if class_names is not None:
            if isinstance(class_names, (str, Path)):
                vocab = Vocabulary.from_file(class_names)
                class_names = [names[0] for names in vocab.synonyms]
            self.set_dataset_classes(class_names)

    def head_with_templates(self, decode_head: dict) -> dict:
        """The head config with ``num_templates`` from the text encoder
        when the head takes per-template embeddings
        (``uses_template_embeddings``) and a ``num_templates`` argument
        that its config leaves out or None; a given value must agree with
        the text encoder."""
        decode_head = dict(decode_head)
        head_type = decode_head.get('type')
        head_cls = MODELS.get(head_type) if isinstance(head_type, str) \
            else head_type
        templates = getattr(self.text_encoder, 'templates', None)
        if templates is None or not isinstance(head_cls, type) or \
                not getattr(head_cls, 'uses_template_embeddings', False) or \
                not takes_argument(head_cls, 'num_templates'):
            return decode_head
        given = decode_head.get('num_templates')
        if given is None:
            decode_head['num_templates'] = len(templates)
        elif given != len(templates):
            raise OVSSConfigError(
                f'the text encoder gives {len(templates)} templates per '
                f'class but decode_head.num_templates={given!r}: leave '
                'num_templates out (None) to take the text encoder\'s '
                'count, or make them agree')
        return decode_head

    # ------------------------------------------------------- vocabulary
    def set_dataset_classes(self, classes: Sequence[str]) -> None:
        """The class names labels and predictions index (set for each stage
        by ``DatasetVocabularyHook``); clears the zero-shot split, which
        the hook gives again where the stage has one."""
        classes = tuple(str(c) for c in classes)
        if not classes:
            raise OVSSConfigError('set_dataset_classes got no classes')
        self.dataset_classes = classes
        self.zero_shot_split = None

    def set_zero_shot_split(self, seen_ids: Sequence[int],
                            unseen_ids: Sequence[int]) -> None:
        """Seen and unseen class indices of the active vocabulary."""
        count = len(self._require_classes())
        ids = [*seen_ids, *unseen_ids]
        bad = [i for i in ids if not 0 <= int(i) < count]
        if bad or len(set(ids)) != len(ids):
            raise OVSSConfigError(
                f'zero-shot split seen={list(seen_ids)} unseen='
                f'{list(unseen_ids)} is not a partition of ids of the '
                f'{count} active classes')
        self.zero_shot_split = (tuple(int(i) for i in seen_ids),
                                tuple(int(i) for i in unseen_ids))

    def _require_classes(self) -> Tuple[str, ...]:
        if self.dataset_classes is None:
            raise OVSSConfigError(
                f'{type(self).__name__} has no vocabulary: add '
                "custom_hooks = [dict(type='DatasetVocabularyHook')] to the "
                'config (it gives each stage its dataset classes), or set '
                'model.class_names')
        return self.dataset_classes

    def vocabulary(self) -> Vocabulary:
        """The active classes, each with its prompt names."""
        names = [self.class_name_map.get(c) or self._prompt_names(c)
                 for c in self._require_classes()]
        # synonyms taken apart may repeat across classes (ADE-847 has
        # 'screen' first in two classes, as in CAT-Seg's prompts): allowed,
        # with a warning naming the classes that can never win
        shared = 'error' if self.class_name_synonyms == 'whole' else 'allow'
        return Vocabulary.from_names(names, shared_synonyms=shared,
                                     source='the dataset classes')

    def _prompt_names(self, name: str) -> Tuple[str, ...]:
        """The prompt names of a dataset class under
        ``class_name_synonyms``."""
        if self.class_name_synonyms == 'whole':
            return (name, )
        synonyms = tuple(s for s in split_synonyms(name) if s) or (name, )
        return synonyms[:1] if self.class_name_synonyms == 'first' \
            else synonyms

    @property
    def num_classes(self) -> int:
        """Classes of the active vocabulary."""
        return len(self._require_classes())

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def text_inputs(self) -> ClassEmbeddings:
        """Class embeddings of the active vocabulary (cached by the text
        encoder while it is frozen).

        With :meth:`selected_text_gradients` the whole vocabulary is
        embedded without gradients (for the head's class selection) and
        ``embed_classes`` re-embeds with gradients the classes the head
        keeps (:meth:`ClassEmbeddings.with_gradients`): the loss and
        gradients of embedding every class with gradients, with the
        tower's activations kept for the prompts of those classes only."""
        vocab = self.vocabulary()
        with_templates = bool(getattr(self.decode_head,
                                      'uses_template_embeddings', False))
        embed_classes = None
        if self.selected_text_gradients():
            with torch.no_grad(), self.text_encoder.uncached():
                embeddings, templates = self.embed_text(vocab,
                                                        with_templates)
            embed_classes = partial(self.embed_class_subset, vocab,
                                    with_templates)
        else:
            embeddings, templates = self.embed_text(vocab, with_templates)
        seen = unseen = None
        if self.zero_shot_split is not None:
            seen, unseen = self.zero_shot_split
        return ClassEmbeddings(
            embeddings=embeddings, template_embeddings=templates,
            class_names=self._require_classes(), seen_ids=seen,
            unseen_ids=unseen, logit_scale=self.text_encoder.logit_scale,
            embed_classes=embed_classes)

    def selected_text_gradients(self) -> bool:
        """Whether the text tower's gradients go through the head's
        selected classes only: in training, with a head that asks for it
        (``embeds_selected_text``) and a text tower that computes with
        gradients."""
        tracks = getattr(self.text_encoder, 'tracks_gradients', None)
        return self.training and tracks is not None and \
            bool(getattr(self.decode_head, 'embeds_selected_text', False)) \
            and bool(tracks())

    def embed_text(self, vocab: Vocabulary, with_templates: bool
                   ) -> Tuple[Tensor, Optional[Tensor]]:
        """(C, D) class embeddings of ``vocab`` and, ``with_templates``,
        the (C, T, D) per-template ones (else None)."""
        embedded = self.text_encoder.embed_vocabulary(
            vocab, with_templates=with_templates)
        index = embedded.query_to_class.to(embedded.query_embeddings.device)
        embeddings = per_class_mean(embedded.query_embeddings, index,
                                    vocab.num_classes)
        templates = None
        if with_templates:
            templates = per_class_mean(embedded.template_embeddings, index,
                                       vocab.num_classes)
        return embeddings, templates

    def embed_class_subset(self, vocab: Vocabulary, with_templates: bool,
                           class_ids: Tensor
                           ) -> Tuple[Tensor, Optional[Tensor]]:
        """:meth:`embed_text` of the classes ``class_ids`` of ``vocab``
        (one text-tower pass over their prompts)."""
        subset = Vocabulary(
            tuple(vocab.synonyms[i] for i in class_ids.tolist()),
            shared_synonyms=vocab.shared_synonyms)
        return self.embed_text(subset, with_templates)

    # -------------------------------------------------------- features
    def extract_feat(self, inputs: Tensor) -> Any:
        """Image features for the head: the backbone's outputs (methods
        override this to run the backbone their way)."""
        return self.backbone(inputs)

    def head_inputs(self, inputs: Tensor) -> OpenVocabInputs:
        return OpenVocabInputs(visual=self.extract_feat(inputs),
                               text=self.text_inputs())

    # ----------------------------------------------------- mmseg calls
    def loss(self, inputs: Tensor, data_samples) -> dict:
        losses = self.decode_head.loss(self.head_inputs(inputs),
                                       data_samples, self.train_cfg)
        return add_prefix(losses, 'decode')

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]
                      ) -> Tensor:
        """(B, C, H, W) class scores of whole inputs, calibrated."""
        scores = self.decode_head.predict(self.head_inputs(inputs),
                                          batch_img_metas, self.test_cfg)
        return self.calibrate(scores)

    def calibrate(self, scores: Tensor) -> Tensor:
        """Subtract ``seen_score_offset`` from the seen classes' scores when
        the stage has unseen classes (inductive zero-shot testing)."""
        if self.training or not self.seen_score_offset or \
                self.zero_shot_split is None or not self.zero_shot_split[1]:
            return scores
        offset = torch.zeros(scores.shape[1], dtype=scores.dtype,
                             device=scores.device)
        offset[list(self.zero_shot_split[0])] = self.seen_score_offset
        return scores - offset.view(1, -1, 1, 1)

    def _forward(self, inputs: Tensor, data_samples=None):
        """The head's raw outputs (mmseg's ``mode='tensor'``)."""
        return self.decode_head.forward(self.head_inputs(inputs))

    def postprocess_result(self, seg_logits: Tensor, data_samples=None):
        data_samples = super().postprocess_result(seg_logits, data_samples)
        for sample in data_samples:
            # a one-class vocabulary: mmseg thresholds sigmoid(logits) at
            # 0.5; these are already scores, so label every pixel class 0
            if seg_logits.shape[1] == 1:
                shape = sample.seg_logits.data.shape[-2:]
                sample.pred_sem_seg = PixelData(data=torch.zeros(
                    (1, *shape), dtype=torch.long,
                    device=seg_logits.device))
        return data_samples


def takes_argument(cls: type, name: str) -> bool:
    """Whether ``cls.__init__`` (or that of a base class it passes its
    keyword arguments on to) names the argument ``name``."""
    return any(name in inspect.signature(base.__init__).parameters
               for base in cls.__mro__ if '__init__' in vars(base))


def per_class_mean(embeddings: Tensor, query_to_class: Tensor,
                   num_classes: int) -> Tensor:
    """Normalised mean of the rows (dim 0) of each class's queries."""
    if embeddings.shape[0] == num_classes and \
            torch.equal(query_to_class, torch.arange(
                num_classes, device=query_to_class.device)):
        return embeddings
    summed = embeddings.new_zeros((num_classes, *embeddings.shape[1:]))
    summed = summed.index_add(0, query_to_class, embeddings)
    return F.normalize(summed, dim=-1)
