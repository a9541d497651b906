"""Fine-grained class descriptions (FreeCP Sec. 4.2 and Table 4).

A description file ``data/descriptions/<vocabulary>.json`` maps a class name
(any of its synonyms) to a list of sentences. A class embedding is the
L2-normalised mean of the L2-normalised embeddings of its sentences, encoded
raw (no template), as the authors do. Classes the file does not cover fall
back to their template embedding with a warning; a missing file is an error.
"""
import json
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from mmseg_ovss.clip.features import VocabularyEmbeddings
from mmseg_ovss.utils.errors import OVSSDataError
from mmseg_ovss.utils.paths import resolve_data_path

DescriptionTable = Dict[str, List[str]]


def load_descriptions(path: Union[str, Path]) -> DescriptionTable:
    """Read a description file: ``{class name: [sentence, ...]}``."""
    try:
        resolved = resolve_data_path(path)
    except OVSSDataError as err:
        raise OVSSDataError(
            f'FreeCP description file {str(path)!r} not found. Write one with '
            f'tools/generate_descriptions.py, point the head\'s '
            f'`descriptions` to an existing file, or set '
            f'descriptions=None to use prompt templates instead.') from err
    with open(resolved, encoding='utf-8') as handle:
        try:
            table = json.load(handle)
        except json.JSONDecodeError as err:
            raise OVSSDataError(
                f'description file {str(resolved)!r} is not valid JSON '
                f'({err}); regenerate it with tools/generate_descriptions.py'
            ) from err
    if not isinstance(table, dict):
        table, bad = {}, ['<top level is not an object>']
    else:
        bad = [name for name, sents in table.items()
               if not isinstance(sents, list)
               or not all(isinstance(s, str) and s.strip() for s in sents)]
    if bad:
        raise OVSSDataError(
            f'description file {str(resolved)!r} must map each class name '
            f'to a list of non-empty sentences; bad entries: {bad[:5]}')
    return table


def _name_key(name: str) -> str:
    """Compare names ignoring case, spaces and punctuation, so that
    "chest of drawers", "chestofdrawers" and "Chest-of-drawers" match."""
    return re.sub(r'[^0-9a-z]', '', name.lower())


def match_descriptions(synonyms: Sequence[Sequence[str]],
                       table: DescriptionTable
                       ) -> List[Optional[List[str]]]:
    """Sentences of each class: those of every synonym found in the table
    (see :func:`_name_key`), or None when none is found."""
    keyed: Dict[str, List[str]] = {}
    for key, sents in table.items():
        keyed.setdefault(_name_key(key), []).extend(sents)
    matched = []
    for names in synonyms:
        sentences = []
        for key in dict.fromkeys(_name_key(name) for name in names):
            sentences += keyed.get(key, [])
        matched.append(list(dict.fromkeys(sentences)) or None)
    return matched


def template_class_embeddings(vocab: VocabularyEmbeddings) -> Tensor:
    """(K, D) class embeddings from the template queries: the normalised
    mean of each class's query embeddings."""
    emb = vocab.query_embeddings.float()
    out = emb.new_zeros(vocab.num_classes, emb.shape[1])
    out.index_add_(0, vocab.query_to_class.to(emb.device), emb)
    return F.normalize(out, dim=-1)


def description_class_embeddings(vocab: VocabularyEmbeddings,
                                 table: DescriptionTable,
                                 classes: Optional[Sequence[int]] = None
                                 ) -> Tuple[Tensor, List[str]]:
    """(K, D) class embeddings from descriptions, one text-encoder batch.

    Args:
        vocab: the vocabulary (needs ``encode_text``).
        table: loaded description file.
        classes: classes that need an embedding (others keep their
            template embedding silently); all by default.
    Returns:
        embeddings and the names of the classes that fell back to their
        template embedding (a warning lists them).
    """
    if vocab.encode_text is None:
        raise OVSSDataError(
            'the vocabulary has no encode_text; the text encoder must expose '
            'it to embed FreeCP descriptions')
    result = template_class_embeddings(vocab)
    wanted = range(vocab.num_classes) if classes is None else classes
    matched = match_descriptions(vocab.synonyms, table)
    sentences, owners, missing = [], [], []
    for index in wanted:
        if matched[index] is None:
            missing.append(vocab.class_names[index])
            continue
        sentences += matched[index]
        owners += [index] * len(matched[index])
    if missing:
        warnings.warn(
            f'no FreeCP description for {len(missing)} class(es) '
            f'{missing[:10]}; using their template embeddings. Add them to '
            f'the description file (tools/generate_descriptions.py).',
            stacklevel=2)
    if sentences:
        emb = F.normalize(vocab.encode_text(sentences).float(), dim=-1)
        owner = torch.tensor(owners, device=emb.device)
        sums = emb.new_zeros(vocab.num_classes, emb.shape[1])
        sums.index_add_(0, owner, emb)
        described = torch.unique(owner)
        result = result.to(emb.device)
        result[described] = F.normalize(sums[described], dim=-1)
    return result, missing
