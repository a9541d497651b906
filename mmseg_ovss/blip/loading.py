"""Build a BLIP image-text-matching model and its tokenizer from transformers.

PnP-OVSS (Luo et al., CVPR 2024) uses BLIP ITM "large" with the Flickr
retrieval weights; ``Salesforce/blip-itm-large-flickr`` holds the same weights
(FACTS §4). Weights come from a HuggingFace id, a local folder written by
``save_pretrained`` / ``huggingface-cli download``, or a ``BlipConfig`` (random
weights, tests).
"""
import os
import os.path as osp
import warnings
from typing import Optional, Tuple, Union

from mmseg_ovss.utils.errors import OVSSConfigError, OVSSWeightsError

#: The ITM checkpoints PnP-OVSS can run on (paper: Flickr large; Table 3 also
#: reports BLIP COCO).
BLIP_ITM_MODELS = {
    'large-flickr': 'Salesforce/blip-itm-large-flickr',
    'large-coco': 'Salesforce/blip-itm-large-coco',
    'base-flickr': 'Salesforce/blip-itm-base-flickr',
    'base-coco': 'Salesforce/blip-itm-base-coco',
}

#: BLIP's text encoder is BERT-base (12 heads) and its ViT uses layer-norm
#: eps 1e-6; some hub configs carried other values (FACTS §4).
BLIP_TEXT_HEADS = 12
BLIP_VISION_LN_EPS = 1e-6


def resolve_blip_name(name: str) -> str:
    """Map an alias (``'large-flickr'``) to its hub id; else return as is."""
    return BLIP_ITM_MODELS.get(name, name)


def fix_blip_config(config, warn: bool = True):
    """Set the text head count and ViT layer-norm eps BLIP was trained with.

    Returns the list of ``(field, old, new)`` changes made.
    """
    changes = []
    if config.text_config.num_attention_heads != BLIP_TEXT_HEADS:
        changes.append(('text_config.num_attention_heads',
                        config.text_config.num_attention_heads,
                        BLIP_TEXT_HEADS))
        config.text_config.num_attention_heads = BLIP_TEXT_HEADS
    if config.vision_config.layer_norm_eps != BLIP_VISION_LN_EPS:
        changes.append(('vision_config.layer_norm_eps',
                        config.vision_config.layer_norm_eps,
                        BLIP_VISION_LN_EPS))
        config.vision_config.layer_norm_eps = BLIP_VISION_LN_EPS
    if changes and warn:
        warnings.warn('BLIP config corrected to the trained architecture: ' +
                      ', '.join(f'{k} {a} -> {b}' for k, a, b in changes))
    return changes


def _weights_error(name: str, err: Exception) -> OVSSWeightsError:
    return OVSSWeightsError(
        f'cannot load the BLIP ITM weights "{name}" ({type(err).__name__}: '
        f'{err}). Without network access, download them elsewhere with '
        f'`huggingface-cli download {resolve_blip_name(name)} --local-dir '
        f'<folder>` (or `save_pretrained(<folder>)`), copy the folder here '
        f'and set `model.blip.pretrained=\'<folder>\'` in the config.')


def load_blip_itm(pretrained: Union[str, dict, None] = 'large-flickr',
                  config: Optional[dict] = None,
                  tokenizer: Optional[str] = None,
                  fix_config: bool = True,
                  local_files_only: Optional[bool] = None) -> Tuple:
    """Return ``(BlipForImageTextRetrieval, tokenizer)`` in eval mode.

    Args:
        pretrained: hub id, alias of :data:`BLIP_ITM_MODELS` or local folder;
            None builds random weights from ``config``.
        config: ``BlipConfig`` keyword arguments (only when ``pretrained`` is
            None), e.g. from
            :func:`mmseg_ovss.testing.tiny_blip.tiny_blip_config`.
        tokenizer: folder or hub id of the tokenizer; defaults to
            ``pretrained``. Required when ``pretrained`` is None.
        fix_config: apply :func:`fix_blip_config` to loaded configs.
        local_files_only: forwarded to transformers; defaults to True when
            ``HF_HUB_OFFLINE`` is set.
    """
    from transformers import (AutoTokenizer, BlipConfig,
                              BlipForImageTextRetrieval)
    if local_files_only is None:
        offline = os.environ.get('HF_HUB_OFFLINE', '0')
        local_files_only = offline not in ('', '0')
    if pretrained is None:
        if config is None:
            raise OVSSConfigError(
                'BLIP needs either `pretrained` (hub id or local folder) or '
                '`config` (BlipConfig arguments for random weights).')
        if tokenizer is None:
            raise OVSSConfigError(
                'a randomly initialised BLIP needs `tokenizer` (a folder with '
                'a BERT vocab.txt, e.g. from mmseg_ovss.testing.tiny_blip).')
        model = BlipForImageTextRetrieval(BlipConfig(**config))
    else:
        name = resolve_blip_name(pretrained)
        looks_local = (name.startswith(('/', '.', '~')) or name.count('/') > 1
                       or osp.isdir(name))
        name = osp.expanduser(name)
        if looks_local and not osp.isdir(name):
            raise OVSSWeightsError(
                f'BLIP folder "{name}" does not exist. Pass a folder holding '
                f'config.json and the weights (written by `save_pretrained` '
                f'or `huggingface-cli download`), or a hub id such as '
                f'"{BLIP_ITM_MODELS["large-flickr"]}".')
        try:
            blip_config = BlipConfig.from_pretrained(
                name, local_files_only=local_files_only)
            if fix_config:
                fix_blip_config(blip_config)
            model = BlipForImageTextRetrieval.from_pretrained(
                name, config=blip_config, local_files_only=local_files_only)
        except (OSError, ValueError) as err:
            raise _weights_error(name, err) from err
        tokenizer = tokenizer or name
    try:
        tok = AutoTokenizer.from_pretrained(
            tokenizer, local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        raise _weights_error(tokenizer, err) from err
    model.eval()
    model.requires_grad_(False)
    return model, tok
