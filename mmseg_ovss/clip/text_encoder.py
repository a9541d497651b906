"""Text side of CLIP: prompt-ensembled query embeddings.

For each query (class name or synonym) q: e_q = normalise(mean_t
normalise(E_text(t(q)))) over the templates t (CLIP's prompt ensembling,
Radford et al., 2021, Sec. 3.1.4; computed so in SCLIP, ``wangf3014/SCLIP``,
``clip_segmentor.py``).

:class:`PromptEnsembleEncoding` holds this computation for the registered
:class:`~mmseg_ovss.models.text_encoders.OpenCLIPTextEncoder`; the helpers
here read an open_clip model's text tower and run it.
"""
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import Tensor, nn

from mmseg_ovss.clip.features import VocabularyEmbeddings
from mmseg_ovss.clip.text_bank import (TextEmbeddingBank,
                                       architecture_fingerprint, bank_digest,
                                       encode_with_bank, resolve_bank_dir,
                                       weights_digest)
from mmseg_ovss.clip.templates import (TemplateSpec, load_templates,
                                       templates_key)
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

#: What an open_clip text transformer is made of: attributes of ``CLIP``
#: (pooling in ``text_pool_type``) and of ``TextTransformer``, the ``.text``
#: of ``CustomTextCLIP`` (pooling in ``pool_type``).
TEXT_TOWER_PARTS = ('token_embedding', 'positional_embedding', 'transformer',
                    'ln_final', 'text_projection', 'attn_mask')


# ------------------------------------------------------------ the tower
def text_tower_of(model: nn.Module) -> nn.Module:
    """The module holding an open_clip model's text tower: ``CLIP`` itself
    (the tower's parts are its attributes) or ``CustomTextCLIP.text``."""
    if all(hasattr(model, name) for name in TEXT_TOWER_PARTS):
        return model
    text = getattr(model, 'text', None)
    if isinstance(text, nn.Module):
        return text
    raise OVSSConfigError(
        f'{type(model).__name__} has no open_clip text tower (neither the '
        f'attributes {TEXT_TOWER_PARTS} of open_clip.CLIP nor a .text module '
        'of open_clip.CustomTextCLIP); pass an open_clip CLIP model')


def is_layered_tower(tower: nn.Module) -> bool:
    """Whether ``tower`` is open_clip's plain causal text transformer, run
    here part by part (no CoCa class token, no padding mask)."""
    return (all(hasattr(tower, name) for name in TEXT_TOWER_PARTS)
            and getattr(tower, 'cls_emb', None) is None
            and not getattr(tower, 'use_pad_mask', False))


def tower_pooling(tower: nn.Module):
    """``(pool_type, eos_token_id)`` of a layered tower."""
    if hasattr(tower, 'text_pool_type'):
        return tower.text_pool_type, getattr(tower, 'text_eos_id', None)
    return getattr(tower, 'pool_type', 'argmax'), getattr(tower, 'eos_id',
                                                          None)


def tower_dtype(tower: nn.Module) -> torch.dtype:
    """The dtype the text tower computes in."""
    if is_layered_tower(tower):
        return tower.transformer.get_cast_dtype()
    return next(tower.parameters()).dtype


def encode_tokens(tower: nn.Module, tokens: Tensor, device: torch.device,
                  truncate_context: bool = True) -> Tensor:
    """(N, D) text features (not normalised) of token ids (N, L).

    A layered tower computes what open_clip's ``CLIP.encode_text`` (or
    ``TextTransformer.forward``) computes, step by step. With
    ``truncate_context``, a causal tower that pools at the end-of-text token
    (``argmax``: the highest token id) runs only up to the last end-of-text
    token of the batch: positions after it cannot reach the pooled token
    through the causal mask, so the result is the same at a fraction of the
    cost. The cut is found on ``tokens`` where they are (the tokenizer's CPU
    tensor: no device sync). Other towers (Hugging Face text models, CoCa)
    are called on the full context.
    """
    if not is_layered_tower(tower):
        out = tower(tokens.to(device))
        return out[0] if isinstance(out, tuple) else out
    pool_type, eos_id = tower_pooling(tower)
    if (truncate_context and pool_type == 'argmax'
            and tower.attn_mask is not None):
        tokens = tokens[:, :int(tokens.argmax(dim=-1).max()) + 1]
    tokens = tokens.to(device)
    length = tokens.shape[1]
    dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(dtype)
    x = x + tower.positional_embedding[:length].to(dtype)
    mask = None if tower.attn_mask is None else \
        tower.attn_mask[:length, :length]
    x = tower.transformer(x, attn_mask=mask)
    x = tower.ln_final(x)
    x = text_global_pool(x, tokens, pool_type, eos_token_id=eos_id)
    projection = tower.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) \
        else x @ projection


def weights_version_key(tensors: Iterable[Tensor]) -> tuple:
    """Identity and version of each tensor: changes with every in-place
    update (an optimiser step, ``load_state_dict``) and every move or cast
    (edits through ``.data`` bypass the version counter)."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


# ------------------------------------------------------ the computation
class PromptEnsembleEncoding:
    """Sentences, template prompts and vocabularies through a text tower.

    A subclass provides :attr:`text_tower`, :meth:`weights_key` and
    :meth:`tracks_gradients`, and calls :meth:`setup_encoding`. Results
    computed without gradients are cached per vocabulary (LRU,
    ``cache_size`` entries) under a key of the weights' versions, the
    vocabulary, the templates, device, dtype, inference mode and autocast
    state, so that a weight update can never return stale embeddings.
    """

    def setup_encoding(self, tokenizer, templates: TemplateSpec,
                       batch_size: int, cache_size: int,
                       truncate_context: bool,
                       text_bank: Union[None, str, Path] = None) -> None:
        """Set the tokenizer, templates, batching and cache.

        Args:
            tokenizer: the model's open_clip tokenizer.
            templates: see :func:`mmseg_ovss.clip.templates.load_templates`.
            batch_size: sentences per text-tower call.
            cache_size: vocabularies kept in memory (0: none).
            truncate_context: run the tower only up to the longest prompt
                of a batch (see :func:`encode_tokens`).
            text_bank: keep every sentence's embedding on disk while the
                tower is frozen (:mod:`mmseg_ovss.clip.text_bank`):
                ``'auto'`` (``$OVSS_TEXT_BANK`` or
                ``~/.cache/mmseg_ovss/text_bank``), a folder, or None (off).
        """
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise OVSSConfigError(
                f'batch_size={batch_size!r} must be a positive number of '
                'sentences per text-tower call (e.g. 256)')
        if isinstance(cache_size, bool) or int(cache_size) < 0:
            raise OVSSConfigError(
                f'cache_size={cache_size!r} must be a number of '
                'vocabularies >= 0 (0 disables the cache)')
        self.tokenizer = tokenizer
        self.templates_spec = templates
        self.templates = load_templates(templates)
        self.batch_size = int(batch_size)
        self.cache_size = int(cache_size)
        self.truncate_context = bool(truncate_context)
        self._cache: 'OrderedDict[tuple, VocabularyEmbeddings]' = \
            OrderedDict()
        self._cached_weights: Optional[tuple] = None
        self.text_bank_dir = resolve_bank_dir(text_bank)
        # (weights key, architecture fingerprint, bank)
        self._bank: Optional[tuple] = None
        # set once the tower has computed with gradients (is being trained)
        self._trained_here = False

    # -------------------------------------------------- subclass contract
    @property
    def text_tower(self) -> nn.Module:
        raise NotImplementedError

    def weights_key(self) -> tuple:
        """Identity and versions of every weight the embeddings depend on."""
        raise NotImplementedError

    def tracks_gradients(self) -> bool:
        """Whether results are computed with gradients (and not cached)."""
        raise NotImplementedError

    def encoding_settings(self) -> dict:
        """Settings outside the tower that the embeddings depend on (model
        name, tokenizer), part of the bank key."""
        tokenizer = self.tokenizer
        inner = getattr(tokenizer, 'tokenizer', None)
        return dict(
            model_name=getattr(self, 'model_name', None),
            tokenizer=type(tokenizer).__qualname__,
            tokenizer_context_length=getattr(tokenizer, 'context_length',
                                             None),
            tokenizer_name=getattr(inner, 'name_or_path', None))

    # ------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.text_tower.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return tower_dtype(self.text_tower)

    def _grad_mode(self):
        if self.tracks_gradients():
            # the weights change from here on: rows banked for them (at a
            # validation between steps) would never be read again
            self._trained_here = True
            return nullcontext()
        return torch.no_grad()

    def clear_cache(self) -> None:
        self._cache.clear()

    @contextmanager
    def uncached(self) -> Iterator[None]:
        """Neither the vocabulary cache nor the on-disk bank inside the
        ``with`` block, so every sentence runs through the tower (a FLOP
        count; a pass over weights that change every step, which would
        only fill them); both are back afterwards."""
        saved = self.cache_size, self.text_bank_dir, self._bank
        self.cache_size, self.text_bank_dir, self._bank = 0, None, None
        try:
            yield
        finally:
            self.cache_size, self.text_bank_dir, self._bank = saved

    def _autocast_state(self) -> tuple:
        """(enabled, dtype) of autocast on the tower's device type."""
        device_type = self.device.type
        if not torch.is_autocast_enabled(device_type):
            return (False, None)
        return (True, torch.get_autocast_dtype(device_type))

    def _encode_tokens(self, tokens: Tensor) -> Tensor:
        """(N, D) text features of token ids (:func:`encode_tokens`)."""
        return encode_tokens(self.text_tower, tokens, self.device,
                             self.truncate_context)

    # --------------------------------------------------------- encodings
    def encode_text(self, sentences: Sequence[str]) -> Tensor:
        """(N, D) L2-normalised embeddings of raw sentences (no template)."""
        if isinstance(sentences, str):
            sentences = [sentences]
        sentences = list(sentences)
        if not sentences:
            raise OVSSConfigError(
                'encode_text needs at least one sentence, got an empty list')
        bank = self.text_bank()
        if bank is not None:
            # the bank's rows are the tower's own dtype, never autocast's
            with torch.no_grad(), torch.autocast(self.device.type,
                                                 enabled=False):
                return encode_with_bank(bank, sentences, self._encode_batch,
                                        self.batch_size, self.device)
        with self._grad_mode():
            return torch.cat([
                self._encode_batch(sentences[start:start + self.batch_size])
                for start in range(0, len(sentences), self.batch_size)])

    def _encode_batch(self, sentences: Sequence[str]) -> Tensor:
        """(N, D) L2-normalised float32 embeddings of one batch."""
        features = self._encode_tokens(self.tokenizer(list(sentences)))
        return F.normalize(features.float(), dim=-1)

    def text_bank(self) -> Optional[TextEmbeddingBank]:
        """The on-disk bank of the current weights and architecture, or
        None: off, the tower computes with gradients or has done so in this
        process (it is being trained: rows banked at its validations would
        never be read again), or under ``torch.jit`` tracing. A trainable
        tower that only ever runs without gradients (testing a trained
        checkpoint) uses the bank.
        The weights' digest is computed once per weights version
        (:meth:`weights_key`)."""
        if (self.text_bank_dir is None or torch.jit.is_tracing()
                or self.tracks_gradients()
                or self._trained_here):
            return None
        key = self.weights_key()
        fingerprint = architecture_fingerprint(self.text_tower,
                                               self.encoding_settings())
        if self._bank is None or self._bank[:2] != (key, fingerprint):
            digest = bank_digest(weights_digest(self.text_tower),
                                 fingerprint)
            bank = TextEmbeddingBank(self.text_bank_dir, digest, self.dtype,
                                     self.device.type)
            self._bank = (key, fingerprint, bank)
        return self._bank[2]

    def encode_templates(self, queries: Sequence[str]) -> Tensor:
        """(Q, T, D) embedding of each query under each template, each
        L2-normalised."""
        if isinstance(queries, str):
            queries = [queries]
        queries = list(queries)
        if not queries:
            raise OVSSConfigError(
                'no queries to encode (empty vocabulary); give at least one '
                'class name')
        prompts = [template(query) for query in queries
                   for template in self.templates]
        return self.encode_text(prompts).view(len(queries),
                                              len(self.templates), -1)

    def encode_queries(self, queries: Sequence[str]) -> Tensor:
        """(Q, D) prompt-ensembled embeddings: the normalised mean over the
        templates of :meth:`encode_templates`."""
        return F.normalize(self.encode_templates(queries).mean(dim=1),
                           dim=-1)

    def cache_key(self, vocab: Vocabulary, with_templates: bool) -> tuple:
        """Everything an entry of the vocabulary cache depends on, except
        the weights (the cache is emptied when :meth:`weights_key`
        changes)."""
        return (vocab.synonyms, vocab.background_class, bool(with_templates),
                templates_key(self.templates), str(self.device), self.dtype,
                torch.is_inference_mode_enabled(), self._autocast_state())

    def embed_vocabulary(self, vocab: Vocabulary,
                         with_templates: bool = False
                         ) -> VocabularyEmbeddings:
        """Embeddings of a vocabulary; ``with_templates`` also keeps the
        (Q, T, D) per-template embeddings. Cached unless computed with
        gradients."""
        if not isinstance(vocab, Vocabulary):
            raise OVSSConfigError(
                f'embed_vocabulary needs a mmseg_ovss.clip.vocabulary.'
                f'Vocabulary, got {type(vocab).__name__}; build one with '
                'Vocabulary.from_names([...]) or pass query strings to '
                'encode_queries')
        cached = self.cache_size > 0 and not self.tracks_gradients()
        if cached:
            weights = self.weights_key()
            if weights != self._cached_weights:
                self._cache.clear()
                self._cached_weights = weights
            key = self.cache_key(vocab, with_templates)
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        per_template = self.encode_templates(vocab.queries)
        embeddings = VocabularyEmbeddings(
            query_embeddings=F.normalize(per_template.mean(dim=1), dim=-1),
            query_to_class=torch.tensor(vocab.query_to_class,
                                        dtype=torch.long,
                                        device=per_template.device),
            class_names=vocab.class_names,
            synonyms=[list(names) for names in vocab.synonyms],
            background_class=vocab.background_class,
            encode_text=self.encode_text,
            template_embeddings=per_template if with_templates else None)
        if cached:
            self._cache[key] = embeddings
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return embeddings

    def encode_descriptions(
            self, descriptions: Union[str, Path, Mapping],
            class_names: Sequence[str]) -> Tensor:
        """(K, D) per-class mean of raw description embeddings.

        ``descriptions`` is a table ``{class name: [sentence, ...]}`` or a
        description file (or ``dict(path=..., deduplicate=...)``) read by
        :func:`mmseg_ovss.freecp.descriptions.load_descriptions`; names
        match as there. Each class's sentences are encoded without
        templates, averaged and L2-normalised (FreeCP Sec. 4.2, Eq. 8).
        """
        from mmseg_ovss.freecp.descriptions import (load_descriptions,
                                                    match_descriptions,
                                                    mean_sentence_embeddings)
        if isinstance(descriptions, (str, Path)) or isinstance(
                descriptions.get('path'), (str, Path)):
            descriptions = load_descriptions(descriptions)
        matched = match_descriptions([[n] for n in class_names],
                                     descriptions)
        for name, sentences in zip(class_names, matched):
            if sentences is None:
                raise OVSSDataError(
                    f'no description sentences for class {name!r}; add them '
                    'to the description file (class name -> list of '
                    'sentences)')
        with self._grad_mode():
            return mean_sentence_embeddings(self.encode_text, matched)


def build_tokenizer(model_name: str, context_length: Optional[int] = None):
    """open_clip's tokenizer for an architecture name (``context_length``:
    the model's, by default the architecture config's)."""
    import open_clip
    return open_clip.get_tokenizer(model_name, context_length=context_length)


def vocabulary_from(classes: Optional[Sequence] = None,
                    class_names_file: Optional[str] = None,
                    background_class: Union[int, str, None] = None,
                    shared_synonyms: str = 'error') -> Vocabulary:
    """The config's class-name file wins over a list of classes
    (``background_class`` and ``shared_synonyms`` as in
    :class:`~mmseg_ovss.clip.vocabulary.Vocabulary`)."""
    if class_names_file:
        return Vocabulary.from_file(class_names_file, background_class,
                                    shared_synonyms)
    if classes is None:
        raise OVSSConfigError(
            'no vocabulary: set class_names (a file) in the model config or '
            'run through a dataset whose metainfo has classes')
    return Vocabulary.from_names(list(classes), background_class,
                                 shared_synonyms)
