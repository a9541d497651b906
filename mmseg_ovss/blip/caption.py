"""The PnP-OVSS caption: "a picture of" followed by every class name (§3).

One caption holds all K class names, ``[ENC] a picture of name_1 ... name_K
[SEP]`` (BLIP; BridgeTower: ``<s> ... </s>``). Each name is tokenized on its
own, with the space that precedes it in the caption (byte-level BPE
tokenizers such as BridgeTower's RoBERTa one spell a word differently after
a space; BERT's WordPiece ignores it), so the span of every class is
known exactly (no decoding of word pieces); a class name of several tokens
owns all of them and its map is their mean (§3: "If a class name contains two
or more tokens, we take the mean attention map").

Chunking: BLIP's text encoder has ``max_position_embeddings`` (512) positions.
A vocabulary whose caption is longer is split, in vocabulary order, into the
fewest consecutive chunks that fit; every chunk repeats the prefix and is a
caption of its own (its own ITM logit and gradients). Each class lives in
exactly one chunk, so the per-class maps of all chunks are concatenated back
in vocabulary order; the class-agnostic salience of Salience DropOut sums over
all classes of all chunks.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from mmseg_ovss.utils.errors import OVSSConfigError

DEFAULT_PREFIX = 'a picture of'


@dataclass
class CaptionBatch:
    """Padded token ids of C caption chunks and their class-token layout.

    Attributes:
        input_ids: (C, T) token ids, first token [ENC], padded with pad id.
        attention_mask: (C, T) 1 for real tokens.
        token_weights: (C, Kc, T) averaging weights: row j of chunk c is
            1/len(span) on the tokens of the chunk's j-th class, else 0.
        class_valid: (C, Kc) bool, False for padded class slots.
        captions: the caption text of each chunk (for logs).
    """
    input_ids: Tensor
    attention_mask: Tensor
    token_weights: Tensor
    class_valid: Tensor
    captions: List[str]

    @property
    def num_classes(self) -> int:
        return int(self.class_valid.sum())

    def to(self, device) -> 'CaptionBatch':
        return CaptionBatch(self.input_ids.to(device),
                            self.attention_mask.to(device),
                            self.token_weights.to(device),
                            self.class_valid.to(device), self.captions)


def tokenize_words(tokenizer, text: str) -> List[int]:
    """Word-piece ids of ``text`` without special tokens."""
    ids = tokenizer(text, add_special_tokens=False)['input_ids']
    return list(ids)


def enc_token_id_of(tokenizer, text_vocab_size: int) -> int:
    """Id of BLIP's [ENC] token, which must open an ITM caption.

    The authors' ITM forward sets it (``text.input_ids[:, 0] =
    self.tokenizer.enc_token_id`` in ``Files to replace for
    BLIP/blip_image_text_matching.py`` of letitiabanana/PnP-OVSS).

    The HuggingFace tokenizer leaves [CLS] there; BLIP's [ENC] is the last id
    of the text vocabulary (30523 for the released models) when the tokenizer
    does not list it.
    """
    unk = tokenizer.unk_token_id
    tid = tokenizer.convert_tokens_to_ids('[ENC]')
    if tid is not None and tid != unk:
        return int(tid)
    return int(text_vocab_size) - 1


def plan_chunks(name_lengths: Sequence[int], prefix_length: int,
                max_tokens: int) -> List[Tuple[int, int]]:
    """Split classes into consecutive ``[start, end)`` chunks that fit.

    A caption costs ``2 + prefix_length + sum(name lengths)`` tokens ([ENC]
    and [SEP] included).
    """
    budget = max_tokens - 2 - prefix_length
    chunks, start, used = [], 0, 0
    for i, n in enumerate(name_lengths):
        if n > budget:
            raise OVSSConfigError(
                f'class name #{i} needs {n} tokens but a caption has room for '
                f'{budget} after the prefix; shorten the name or raise '
                f'`max_caption_tokens`.')
        if used + n > budget:
            chunks.append((start, i))
            start, used = i, 0
        used += n
    if len(name_lengths):
        chunks.append((start, len(name_lengths)))
    return chunks


def build_captions(tokenizer, class_names: Sequence[str], enc_token_id: int,
                   max_tokens: int, prefix: str = DEFAULT_PREFIX
                   ) -> CaptionBatch:
    """Tokenize the PnP-OVSS caption(s) for ``class_names``.

    ``enc_token_id`` opens every caption (BLIP's [ENC]; BridgeTower's
    ``<s>``), the tokenizer's separator closes it.
    """
    if len(class_names) == 0:
        raise OVSSConfigError('PnP-OVSS needs at least one class name.')
    prefix_ids = tokenize_words(tokenizer, prefix) if prefix else []
    name_ids = [tokenize_words(tokenizer, ' ' + name) for name in class_names]
    for name, ids in zip(class_names, name_ids):
        if not ids:
            raise OVSSConfigError(
                f'class name "{name}" tokenizes to nothing; fix the class '
                f'name file.')
    spans = plan_chunks([len(ids) for ids in name_ids], len(prefix_ids),
                        max_tokens)
    sep = tokenizer.sep_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows, layouts, captions = [], [], []
    for start, end in spans:
        ids = [enc_token_id] + prefix_ids
        layout = []
        for k in range(start, end):
            layout.append((len(ids), len(ids) + len(name_ids[k])))
            ids = ids + name_ids[k]
        rows.append(ids + [sep])
        layouts.append(layout)
        captions.append(' '.join([prefix] + list(class_names[start:end])))
    num_chunks = len(rows)
    length = max(len(r) for r in rows)
    max_classes = max(len(lay) for lay in layouts)
    input_ids = torch.full((num_chunks, length), pad, dtype=torch.long)
    attention_mask = torch.zeros((num_chunks, length), dtype=torch.long)
    weights = torch.zeros((num_chunks, max_classes, length))
    valid = torch.zeros((num_chunks, max_classes), dtype=torch.bool)
    for c, (row, layout) in enumerate(zip(rows, layouts)):
        input_ids[c, :len(row)] = torch.tensor(row)
        attention_mask[c, :len(row)] = 1
        for j, (s, e) in enumerate(layout):
            weights[c, j, s:e] = 1.0 / (e - s)
            valid[c, j] = True
    return CaptionBatch(input_ids, attention_mask, weights, valid, captions)
