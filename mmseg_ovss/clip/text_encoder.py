"""Text side of dense CLIP: prompt-ensembled query embeddings.

For each query (class name or synonym) q: e_q = normalise(mean_t
normalise(E_text(t(q)))) over the templates t (CLIP's prompt ensembling,
Radford et al., 2021, Sec. 3.1.4; computed so in SCLIP, ``wangf3014/SCLIP``,
``clip_segmentor.py``). Embeddings are cached per (model, vocabulary,
templates).
"""
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmseg_ovss.clip.features import VocabularyEmbeddings
from mmseg_ovss.clip.templates import (TemplateSpec, load_templates,
                                       templates_key)
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError


class CLIPTextEncoder:
    """Encodes vocabularies with an open_clip model's text tower.

    Args:
        clip_model: open_clip ``CLIP`` (its ``encode_text`` is used).
        tokenizer: the model's open_clip tokenizer.
        model_key: identity of the weights (for the cache key).
        templates: see :func:`mmseg_ovss.clip.templates.load_templates`.
        batch_size: sentences per text-tower call.
        cache_size: vocabularies kept in memory.
        truncate_context: run the text tower only up to the longest prompt
            of a batch (exact for causal CLIP text towers, several times
            faster); False calls ``encode_text`` on the full context.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, model_key: str,
                 templates: TemplateSpec = 'openai', batch_size: int = 256,
                 cache_size: int = 8, truncate_context: bool = True):
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.model_key = model_key
        self.templates_spec = templates
        self.templates = load_templates(templates)
        self.batch_size = int(batch_size)
        self.cache_size = int(cache_size)
        self.truncate_context = bool(truncate_context)
        self._cache: 'OrderedDict[tuple, VocabularyEmbeddings]' = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.clip_model.parameters()).device

    def _supports_truncation(self) -> bool:
        model = self.clip_model
        return (getattr(model, 'text_pool_type', None) == 'argmax'
                and getattr(model, 'attn_mask', None) is not None
                and hasattr(model, 'token_embedding')
                and hasattr(model, 'positional_embedding'))

    def _encode_tokens(self, tokens: Tensor) -> Tensor:
        """CLIP text tower on tokens cut after the last end-of-text token.

        With the causal mask and pooling at the end-of-text token (the
        highest token id), positions after it cannot change the result, so
        this equals ``model.encode_text`` at a fraction of the cost.
        """
        model = self.clip_model
        if not self.truncate_context or not self._supports_truncation():
            return model.encode_text(tokens)
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1
        dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens[:, :length]).to(dtype)
        x = x + model.positional_embedding[:length].to(dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = model.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    @torch.no_grad()
    def encode_text(self, sentences: Sequence[str]) -> Tensor:
        """(N, D) L2-normalised embeddings of raw sentences (no template)."""
        if isinstance(sentences, str):
            sentences = [sentences]
        if len(sentences) == 0:
            raise OVSSConfigError('encode_text needs at least one sentence')
        chunks = []
        for start in range(0, len(sentences), self.batch_size):
            tokens = self.tokenizer(list(sentences[start:start +
                                                   self.batch_size]))
            emb = self._encode_tokens(tokens.to(self.device))
            chunks.append(F.normalize(emb.float(), dim=-1))
        return torch.cat(chunks)

    @torch.no_grad()
    def encode_queries(self, queries: Sequence[str]) -> Tensor:
        """(Q, D) prompt-ensembled embeddings, one per query string."""
        prompts = [t(q) for q in queries for t in self.templates]
        emb = self.encode_text(prompts).view(len(queries),
                                             len(self.templates), -1)
        return F.normalize(emb.mean(dim=1), dim=-1)

    def cache_key(self, vocab: Vocabulary) -> tuple:
        return (self.model_key, vocab.synonyms, vocab.background_class,
                templates_key(self.templates_spec), str(self.device))

    def __call__(self, vocab: Vocabulary) -> VocabularyEmbeddings:
        """Embeddings of a vocabulary (cached)."""
        key = self.cache_key(vocab)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        embeddings = VocabularyEmbeddings(
            query_embeddings=self.encode_queries(vocab.queries),
            query_to_class=torch.tensor(vocab.query_to_class,
                                        dtype=torch.long, device=self.device),
            class_names=vocab.class_names,
            synonyms=[list(names) for names in vocab.synonyms],
            background_class=vocab.background_class,
            encode_text=self.encode_text)
        self._cache[key] = embeddings
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embeddings

    @torch.no_grad()
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
        return mean_sentence_embeddings(self.encode_text, matched)


def build_tokenizer(model_name: str):
    """open_clip's tokenizer for an architecture name."""
    import open_clip
    return open_clip.get_tokenizer(model_name)


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
