"""Tiny random BLIP ITM models (tests, benchmarks).

The tiny BLIP keeps BLIP's structure where PnP-OVSS relies on it: 12 text
heads and at least 8 text layers (so the paper's layer 8 / head 10 exist),
cross-attention in every text layer, the [ENC] token as the last vocabulary
id, ViT layer-norm eps 1e-6. Everything else is as small as possible.
The search tool's tiny CLIP reward model is ``ovss-tiny-ViT-8`` of
:mod:`mmseg_ovss.testing.tiny_clip`.
"""
import json
import string
from pathlib import Path
from typing import Dict, Iterable

#: Whole words of the tiny vocabulary; any other lower-case word falls back
#: to single-letter word pieces (so multi-token class names are easy).
TINY_WORDS = ('a', 'picture', 'of', 'cat', 'dog', 'person', 'car', 'tree',
              'sky', 'road', 'grass', 'building', 'wall', 'water', 'table',
              'chair', 'boat', 'bird', 'horse', 'sheep', 'cow', 'bus',
              'train', 'bottle', 'plant', 'sofa', 'tv', 'monitor', 'bicycle',
              'motorbike', 'aeroplane', 'potted', 'dining', 'background',
              'photo')


def tiny_vocab(extra_words: Iterable[str] = ()) -> list:
    """BERT-style word-piece vocabulary ending with BLIP's [ENC] token."""
    specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    letters = list(string.ascii_lowercase + string.digits)
    pieces = ['##' + c for c in letters]
    punctuation = list('-.,/\'()&')
    words = [w for w in dict.fromkeys(list(TINY_WORDS) + list(extra_words))
             if w not in letters]
    return specials + letters + pieces + punctuation + words + ['[ENC]']


def tiny_blip_config(vocab_size: int, image_size: int = 64,
                     text_layers: int = 8) -> Dict:
    """``BlipConfig`` keyword arguments of a tiny ITM model."""
    return dict(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=48, intermediate_size=64,
            num_hidden_layers=text_layers, num_attention_heads=12,
            max_position_embeddings=64, pad_token_id=0, sep_token_id=3,
            bos_token_id=vocab_size - 1, eos_token_id=3),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=image_size, patch_size=16,
            layer_norm_eps=1e-6),
        image_text_hidden_size=16, projection_dim=16)


def write_tiny_tokenizer(folder, extra_words: Iterable[str] = ()) -> str:
    """Write a BERT tokenizer (vocab.txt) of :func:`tiny_vocab`; return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab(extra_words)
    (folder / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
    (folder / 'tokenizer_config.json').write_text(json.dumps(dict(
        tokenizer_class='BertTokenizer', do_lower_case=True,
        model_max_length=512)))
    (folder / 'special_tokens_map.json').write_text(json.dumps(dict(
        unk_token='[UNK]', sep_token='[SEP]', pad_token='[PAD]',
        cls_token='[CLS]', mask_token='[MASK]')))
    return str(folder)


def make_tiny_blip(folder, seed: int = 0, image_size: int = 64,
                   extra_words: Iterable[str] = (),
                   init_std: float = 0.3) -> str:
    """Save a tiny random BLIP ITM model and its tokenizer under ``folder``.

    The folder loads like a downloaded checkpoint:
    ``load_blip_itm(pretrained=folder)``. ``init_std`` (larger than BLIP's
    0.02) gives attention maps that differ across patches.
    """
    import torch
    from transformers import BlipConfig, BlipForImageTextRetrieval
    folder = Path(folder)
    write_tiny_tokenizer(folder, extra_words)
    vocab_size = len(tiny_vocab(extra_words))
    config = BlipConfig(**tiny_blip_config(vocab_size, image_size))
    for cfg in (config, config.text_config, config.vision_config):
        cfg.initializer_range = init_std
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(config)
    model.save_pretrained(str(folder))
    return str(folder)



#: BLIP ITM "large" (ViT-L/16 image encoder, BERT-base text encoder with
#: cross-attention) as ``BlipConfig`` arguments, for random-weight benchmarks.
BLIP_LARGE_ARCH = dict(
    text_config=dict(vocab_size=30524, hidden_size=768,
                     intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=512),
    vision_config=dict(hidden_size=1024, intermediate_size=4096,
                       num_hidden_layers=24, num_attention_heads=16,
                       image_size=384, patch_size=16, layer_norm_eps=1e-6),
    image_text_hidden_size=256)


def random_blip_large(folder, class_names: Iterable[str] = ()) -> Dict:
    """``model.blip`` arguments of a random-weight BLIP ITM large.

    The tokenizer is the tiny word-piece one extended with every word of
    ``class_names`` (one token per word, like BERT's vocabulary for common
    words), written to ``folder``. Latency and memory only: the weights are
    random.
    """
    words = sorted({w for name in class_names
                    for w in name.lower().replace(',', ' ').split()})
    return dict(pretrained=None, config=BLIP_LARGE_ARCH,
                tokenizer=write_tiny_tokenizer(folder, words),
                fix_config=False)
