"""Build open_clip models from a pretrained tag, a local file or nothing.

Weights load only through open_clip's own mechanisms:

* ``pretrained='openai'`` (or ``'laion2b_s34b_b88k'`` ...): a tag resolved by
  open_clip's download cache (``cache_dir`` or ``$OPEN_CLIP_CACHE``-style
  Hugging Face cache);
* ``checkpoint='/path/ViT-B-16.pt'``: a local file (an OpenAI TorchScript
  archive, an open_clip state dict, or a ``{'state_dict': ...}`` dict);
* neither, with ``random_init=True``: random weights (tests, benchmarks).
"""
import logging
from pathlib import Path
from typing import Optional

import open_clip
from torch import nn

from mmseg_ovss.utils.errors import OVSSConfigError, OVSSWeightsError

PRECISIONS = ('fp32', 'fp16', 'bf16')


def _quick_gelu_for(model_name: str, pretrained: Optional[str]) -> bool:
    if not pretrained:
        return False
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    return bool(cfg.get('quick_gelu', False))


def build_clip_model(model_name: str = 'ViT-B-16',
                     pretrained: Optional[str] = 'openai',
                     checkpoint: Optional[str] = None,
                     precision: str = 'fp32',
                     device: str = 'cpu',
                     random_init: bool = False,
                     quick_gelu: Optional[bool] = None,
                     cache_dir: Optional[str] = None) -> nn.Module:
    """Return an eval-mode, frozen open_clip ``CLIP`` model.

    Args:
        model_name: open_clip architecture (``ViT-B-16``, ``ViT-L-14``, or a
            tiny test model of :mod:`mmseg_ovss.testing.tiny_clip`).
        pretrained: open_clip pretrained tag; ignored when ``checkpoint`` or
            ``random_init`` is given.
        checkpoint: local weights file.
        precision: ``fp32`` (default), ``fp16`` or ``bf16``.
        random_init: build without weights.
        quick_gelu: force QuickGELU; by default taken from ``pretrained``
            (OpenAI weights were trained with it), also when ``checkpoint``
            is a local copy of those weights; set ``pretrained=None`` for a
            local file of another kind.
    """
    if precision not in PRECISIONS:
        raise OVSSConfigError(
            f'unknown precision {precision!r}; choose one of {PRECISIONS}')
    if model_name.startswith('ovss-tiny'):
        # tiny test architectures register themselves on import
        import mmseg_ovss.testing.tiny_clip  # noqa: F401
    if model_name.replace('/', '-') not in open_clip.list_models():
        raise OVSSConfigError(
            f'unknown open_clip model {model_name!r}; use one of '
            f'open_clip.list_models() (e.g. ViT-B-16, ViT-L-14) or register '
            'a config with open_clip.add_model_config')
    source = None
    if random_init:
        source = None
    elif checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise OVSSWeightsError(
                f'CLIP checkpoint {str(path)!r} does not exist; pass the path '
                'of a local open_clip/OpenAI weights file (e.g. ViT-B-16.pt) '
                'as clip.checkpoint, or use random_init=True / --random-init')
        source = str(path)
        if quick_gelu is None:
            # A local copy of tagged weights keeps the tag's activation.
            quick_gelu = _quick_gelu_for(model_name, pretrained)
    elif pretrained:
        if open_clip.get_pretrained_cfg(model_name, pretrained) in (None, {}):
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise OVSSConfigError(
                f'unknown pretrained tag {pretrained!r} for {model_name}; '
                f'known tags: {tags}, or pass a local file as checkpoint')
        source = pretrained
        if quick_gelu is None:
            quick_gelu = _quick_gelu_for(model_name, pretrained)
    else:
        raise OVSSWeightsError(
            'no CLIP weights configured: set clip.pretrained (e.g. '
            "'openai'), clip.checkpoint='/path/to/ViT-B-16.pt', or "
            'random_init=True')
    try:
        model = open_clip.create_model(
            model_name, pretrained=source, precision=precision, device=device,
            force_quick_gelu=bool(quick_gelu), cache_dir=cache_dir,
            weights_only=False if source and Path(source).is_file() else True)
    except (RuntimeError, OSError) as err:
        if source is None:
            raise
        raise OVSSWeightsError(
            f'could not load CLIP weights {source!r} for {model_name} '
            f'({err}). Offline? Download the weights on a machine with '
            'network access (e.g. open_clip.create_model('
            f"'{model_name}', pretrained='{pretrained}') fills the cache) "
            'and pass the local file as clip.checkpoint=/path/to/file '
            "(tools: --cfg-options model.clip.checkpoint=/path), or use "
            '--random-init to run without weights') from err
    if source is None:
        logging.getLogger(__name__).info(
            'CLIP %s built with random weights', model_name)
    model.eval()
    model.requires_grad_(False)
    return model
