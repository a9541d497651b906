"""Fine-grained class descriptions (FreeCP Sec. 4.2 and Table 4).

A description file ``data/descriptions/<vocabulary>.json`` (UTF-8; a
byte-order mark is dropped) maps a class name (any of its synonyms) to a
list of sentences. A class embedding is the L2-normalised mean of the
L2-normalised embeddings of its sentences, encoded raw (no template), as
the authors do (``chenqi1126/FreeCP``, ``freecp_segmentor.py``,
``create_vocabulary``): every sentence counts, so one listed twice weighs
twice. ``deduplicate=True`` (the head's
``descriptions=dict(path=..., deduplicate=True)``) counts each sentence of
a class once.

Names match ignoring case, spaces and punctuation, in any script and
Unicode normalisation (:func:`description_key`). Classes the file does not
cover fall back to their template embedding with a warning; a missing,
undecodable or malformed file is an error.
"""
import json
import unicodedata
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from mmseg_ovss.clip.features import VocabularyEmbeddings
from mmseg_ovss.clip.vocabulary import name_key, read_utf8_text
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError
from mmseg_ovss.utils.paths import resolve_data_path

DescriptionSpec = Union[str, Path, Mapping]
SPEC_KEYS = ('path', 'deduplicate')


class DescriptionTable(dict):
    """``{class name: [sentence, ...]}``; ``deduplicate``: whether a
    class's repeated sentences count once when it is matched."""
    deduplicate = False


def description_key(name: str) -> str:
    """Key under which names match: NFKC, case-folded, only letters, marks
    and digits (any script), so "chest of drawers", "Chest-of-drawers" and
    "chestofdrawers" match, and so do NFC and NFD "café". A name with no
    letter or digit keeps its :func:`name_key`."""
    folded = unicodedata.normalize('NFKC', name).casefold()
    kept = ''.join(ch for ch in folded
                   if unicodedata.category(ch)[0] in 'LMN')
    return kept or name_key(name)


def _parse_spec(spec: DescriptionSpec, deduplicate: Optional[bool]
                ) -> Tuple[Union[str, Path], bool]:
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown or 'path' not in spec:
            raise OVSSConfigError(
                f'description settings {dict(spec)!r}: expected '
                f"dict(path='data/descriptions/<vocab>.json', "
                f'deduplicate=False){"; unknown keys " if unknown else ""}'
                f'{unknown if unknown else ""}')
        if deduplicate is None:
            deduplicate = spec.get('deduplicate', False)
        spec = spec['path']
    if not isinstance(spec, (str, Path)):
        raise OVSSConfigError(
            f'descriptions={spec!r} is not a file path; give '
            "'data/descriptions/<vocab>.json' or dict(path=..., "
            'deduplicate=...)')
    if not isinstance(deduplicate, (bool, type(None))):
        raise OVSSConfigError(
            f'descriptions deduplicate={deduplicate!r} must be True or False')
    return spec, bool(deduplicate)


def _unique(sentences: Sequence[str]) -> List[str]:
    """Sentences without repeats (spacing ignored), first spelling kept."""
    seen: Dict[str, str] = {}
    for sentence in sentences:
        seen.setdefault(' '.join(sentence.split()), sentence)
    return list(seen.values())


def _keyed(table: Mapping[str, List[str]], origin: str
           ) -> Dict[str, Tuple[str, List[str]]]:
    """``{description_key: (name as written, sentences)}``; two entries
    under one key are an error."""
    keyed: Dict[str, Tuple[str, List[str]]] = {}
    for name, sentences in table.items():
        key = description_key(name)
        if key in keyed:
            raise OVSSDataError(
                f'{origin}: entries {keyed[key][0]!r} and {name!r} name the '
                'same class (names match ignoring case, spaces, punctuation '
                'and Unicode normalisation); merge their sentences into one '
                'entry')
        keyed[key] = (name, sentences)
    return keyed


def load_descriptions(spec: DescriptionSpec,
                      deduplicate: Optional[bool] = None) -> DescriptionTable:
    """Read a description file ``{class name: [sentence, ...]}``.

    Args:
        spec: the file, or ``dict(path=..., deduplicate=...)``.
        deduplicate: count each sentence of a class once (default False:
            every sentence, as the authors); overrides the spec's value.
    """
    path, deduplicate = _parse_spec(spec, deduplicate)
    try:
        resolved = resolve_data_path(path)
    except OVSSDataError as err:
        raise OVSSDataError(
            f'FreeCP description file {str(path)!r} not found. Write one with '
            f'tools/generate_descriptions.py, point the head\'s '
            f'`descriptions` to an existing file, or set '
            f'descriptions=None to use prompt templates instead.') from err
    origin = f'description file {str(resolved)!r}'

    def no_repeated_keys(pairs):
        names = [name for name, _ in pairs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise OVSSDataError(
                f'{origin} lists {repeated[0]!r} twice (JSON keeps only the '
                'last one); merge the entries')
        return dict(pairs)

    text = read_utf8_text(resolved, 'description file')
    try:
        table = json.loads(text, object_pairs_hook=no_repeated_keys)
    except json.JSONDecodeError as err:
        raise OVSSDataError(
            f'{origin} is not valid JSON ({err}); fix it or regenerate it '
            'with tools/generate_descriptions.py') from err
    if not isinstance(table, dict):
        table, bad = {}, ['<top level is not an object>']
    else:
        bad = [name for name, sents in table.items()
               if not name.strip() or not isinstance(sents, list)
               or not all(isinstance(s, str) and s.strip() for s in sents)]
    if bad:
        raise OVSSDataError(
            f'{origin} must map each class name to a list of non-empty '
            f'sentences; bad entries: {bad[:5]}')
    _keyed(table, origin)
    result = DescriptionTable(
        (name, _unique(sents) if deduplicate else list(sents))
        for name, sents in table.items())
    result.deduplicate = deduplicate
    return result


def match_descriptions(synonyms: Sequence[Sequence[str]],
                       table: Mapping[str, List[str]],
                       classes: Optional[Sequence[int]] = None,
                       deduplicate: Optional[bool] = None
                       ) -> List[Optional[List[str]]]:
    """Sentences of each class: those of every synonym found in the table
    (see :func:`description_key`), or None when none is found.

    Args:
        synonyms: the vocabulary's names per class.
        table: a description table.
        classes: the classes to match (others get None); all by default.
            One entry matched by two of them is an error.
        deduplicate: count a class's repeated sentences once; default:
            the table's ``deduplicate`` (False for a plain dict).
    """
    if deduplicate is None:
        deduplicate = getattr(table, 'deduplicate', False)
    keyed = _keyed(table, 'the description table')
    wanted = range(len(synonyms)) if classes is None else classes
    matched: List[Optional[List[str]]] = [None] * len(synonyms)
    user: Dict[str, int] = {}
    for index in wanted:
        sentences = []
        for key in dict.fromkeys(description_key(n) for n in synonyms[index]):
            if key not in keyed:
                continue
            other = user.setdefault(key, index)
            if other != index:
                raise OVSSDataError(
                    f'description entry {keyed[key][0]!r} matches class '
                    f'{other} ({", ".join(synonyms[other])!r}) and class '
                    f'{index} ({", ".join(synonyms[index])!r}), which would '
                    'get the same sentences; rename one of the classes or '
                    'give it its own entry')
            sentences += keyed[key][1]
        if deduplicate:
            sentences = _unique(sentences)
        matched[index] = sentences or None
    return matched


def mean_sentence_embeddings(encode_text: Callable[[List[str]], Tensor],
                             sentences: Sequence[Sequence[str]]) -> Tensor:
    """(K, D) normalised mean of the normalised embeddings of each list of
    sentences, with one text-encoder call for all of them (each distinct
    sentence is encoded once and counted as often as it is listed)."""
    flat = [s for group in sentences for s in group]
    position = {s: i for i, s in enumerate(dict.fromkeys(flat))}
    emb = F.normalize(encode_text(list(position)).float(), dim=-1)
    rows = torch.tensor([position[s] for s in flat], device=emb.device)
    owner = torch.repeat_interleave(
        torch.tensor([len(group) for group in sentences], device=emb.device))
    sums = emb.new_zeros(len(sentences), emb.shape[1])
    sums.index_add_(0, owner, emb[rows])
    return F.normalize(sums, dim=-1)


def template_class_embeddings(vocab: VocabularyEmbeddings) -> Tensor:
    """(K, D) class embeddings from the template queries: the normalised
    mean of each class's query embeddings."""
    emb = vocab.query_embeddings.float()
    out = emb.new_zeros(vocab.num_classes, emb.shape[1])
    out.index_add_(0, vocab.query_to_class.to(emb.device), emb)
    return F.normalize(out, dim=-1)


def description_class_embeddings(vocab: VocabularyEmbeddings,
                                 table: Mapping[str, List[str]],
                                 classes: Optional[Sequence[int]] = None,
                                 deduplicate: Optional[bool] = None
                                 ) -> Tuple[Tensor, List[str]]:
    """(K, D) class embeddings from descriptions, one text-encoder batch.

    Args:
        vocab: the vocabulary (needs ``encode_text``).
        table: loaded description file.
        classes: classes that need an embedding (others keep their
            template embedding silently); all by default.
        deduplicate: see :func:`match_descriptions`.
    Returns:
        embeddings and the names of the classes that fell back to their
        template embedding (a warning lists them).
    """
    if vocab.encode_text is None:
        raise OVSSDataError(
            'the vocabulary has no encode_text; the text encoder must expose '
            'it to embed FreeCP descriptions')
    result = template_class_embeddings(vocab)
    wanted = list(range(vocab.num_classes) if classes is None else classes)
    matched = match_descriptions(vocab.synonyms, table, wanted, deduplicate)
    described = [i for i in wanted if matched[i] is not None]
    missing = [vocab.class_names[i] for i in wanted if matched[i] is None]
    if missing:
        warnings.warn(
            f'no FreeCP description for {len(missing)} class(es) '
            f'{missing[:10]}; using their template embeddings. Add them to '
            f'the description file (tools/generate_descriptions.py).',
            stacklevel=2)
    if described:
        means = mean_sentence_embeddings(vocab.encode_text,
                                         [matched[i] for i in described])
        result = result.to(means.device)
        result[torch.tensor(described, device=means.device)] = means
    return result, missing


def described_queries(vocab: VocabularyEmbeddings, described: Tensor,
                      missing) -> Tuple[Tensor, Tensor]:
    """Queries with descriptions (Table 4 "Initial": Vicuna / GPT-3.5):
    one query per described foreground class, its description embedding
    (``described``, (K, D) from :func:`description_class_embeddings`);
    the template queries (all synonyms) of the background and of the
    classes named in ``missing``. Returns (Q', D) queries and their (Q',)
    classes, in class order."""
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
