"""Tiny random BridgeTower ITM models (tests).

The tiny model keeps the structure PnP-OVSS relies on: 6 cross-modal layers
with 16 heads (BridgeTower large's search space, Table 2 of PnP-OVSS), a
CLIP-style ViT with a CLS token and 14-pixel patches, a RoBERTa byte-level
BPE tokenizer (words after a space are spelled with "Ġ"), ``<s>`` / ``</s>``
around the caption. Everything else is as small as transformers allows (its
ViT blocks have ``hidden_size // 64`` heads, so the ViT is 64 wide).
"""
import json
from pathlib import Path
from typing import Dict, Iterable

#: Words the tiny BPE spells as one token after a space ("Ġcat"); any other
#: word falls back to shorter pieces (multi-token class names).
TINY_WORDS = ('picture', 'of', 'cat', 'dog', 'person', 'car', 'tree', 'sky',
              'road', 'grass', 'building', 'wall', 'water', 'table', 'chair',
              'boat', 'bird', 'horse', 'sheep', 'cow', 'bus', 'train',
              'bottle', 'plant', 'sofa', 'tv', 'monitor', 'bicycle',
              'motorbike', 'aeroplane', 'potted', 'dining', 'background')
SPECIALS = ('<s>', '<pad>', '</s>', '<unk>')


def byte_symbols() -> list:
    """GPT-2's printable stand-ins of the 256 bytes, in byte order."""
    printable = (list(range(ord('!'), ord('~') + 1)) +
                 list(range(ord('¡'), ord('¬') + 1)) +
                 list(range(ord('®'), ord('ÿ') + 1)))
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def tiny_bpe(extra_words: Iterable[str] = ()):
    """(vocab dict, merges list): bytes, then each word after a space built
    left to right ("Ġ c", "Ġc a", "Ġca t")."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for symbol in byte_symbols():
        vocab.setdefault(symbol, len(vocab))
    merges = []
    for word in dict.fromkeys(list(TINY_WORDS) + list(extra_words)):
        piece = 'Ġ'
        for char in word:
            merge = (piece, char)
            piece = piece + char
            if piece not in vocab:
                vocab[piece] = len(vocab)
                merges.append(merge)
    return vocab, merges


def write_tiny_tokenizer(folder, extra_words: Iterable[str] = ()) -> str:
    """Write a RoBERTa tokenizer (vocab.json, merges.txt); return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_bpe(extra_words)
    (folder / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False),
                                       encoding='utf-8')
    (folder / 'merges.txt').write_text(
        '#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in merges),
        encoding='utf-8')
    (folder / 'tokenizer_config.json').write_text(json.dumps(dict(
        tokenizer_class='RobertaTokenizer', model_max_length=512)))
    (folder / 'special_tokens_map.json').write_text(json.dumps(dict(
        bos_token='<s>', eos_token='</s>', unk_token='<unk>',
        sep_token='</s>', pad_token='<pad>', cls_token='<s>',
        mask_token='<unk>')))
    return str(folder)


def tiny_bridgetower_config(vocab_size: int, image_size: int = 56,
                            init_std: float = 0.3) -> Dict:
    """``BridgeTowerConfig`` keyword arguments of a tiny ITM model.

    ``init_std`` (via ``initializer_factor``) larger than BridgeTower's
    gives attention maps that differ across patches.
    """
    factor = init_std / 0.02
    return dict(
        hidden_size=32, num_hidden_layers=6, num_attention_heads=16,
        initializer_factor=factor,
        text_config=dict(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
            num_hidden_layers=6, num_attention_heads=16,
            max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, initializer_factor=factor),
        vision_config=dict(
            hidden_size=64, num_hidden_layers=6, patch_size=14,
            image_size=image_size, initializer_factor=factor))


def make_tiny_bridgetower(folder, seed: int = 0, image_size: int = 56,
                          extra_words: Iterable[str] = ()) -> str:
    """Save a tiny random BridgeTower ITM model and its tokenizer under
    ``folder``; it loads like a download:
    ``load_bridgetower_itm(pretrained=folder)``."""
    import torch
    from transformers import (BridgeTowerConfig,
                              BridgeTowerForImageAndTextRetrieval)
    folder = Path(folder)
    write_tiny_tokenizer(folder, extra_words)
    vocab, _ = tiny_bpe(extra_words)
    config = BridgeTowerConfig(**tiny_bridgetower_config(len(vocab),
                                                         image_size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BridgeTowerForImageAndTextRetrieval(config)
    model.save_pretrained(str(folder))
    return str(folder)
