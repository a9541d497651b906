"""Build a BLIP image-text-matching model and its tokenizer from transformers.

PnP-OVSS (Luo et al., CVPR 2024) uses BLIP ITM "large" with the Flickr
retrieval weights (paper §4, "BLIP Flickr"; the authors' ``Files to replace
for BLIP/blip_itm_large.yaml`` loads ``model_large_retrieval_flickr.pth``);
``Salesforce/blip-itm-large-flickr`` holds the same weights under the
transformers key names. Weights come from a HuggingFace id, a local folder
written by
``save_pretrained`` / ``huggingface-cli download``, or a ``BlipConfig`` (random
weights, tests).
"""
import os.path as osp
import re
import warnings
from typing import Callable, Optional, Tuple, Union

import torch

from mmseg_ovss.clip.loading import hf_endpoint, hub_offline, unreachable
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
#: eps 1e-6 (``partial(nn.LayerNorm, eps=1e-6)`` in the authors' ``Files to
#: replace for BLIP/vit.py``); some hub configs carried other values.
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


def _fetch_hint(name: str) -> str:
    return (f'Without network access, download them elsewhere with '
            f'`huggingface-cli download {resolve_blip_name(name)} --local-dir '
            f'<folder>` (or `save_pretrained(<folder>)`), copy the folder '
            f"here and set `model.blip.pretrained='<folder>'` in the config.")


def _weights_error(name: str, err: Exception) -> OVSSWeightsError:
    """The error of a failed load; the download hint only where the weights
    were to come from the hub."""
    if 'size mismatch' in str(err):
        sizes = re.findall(r'size mismatch for ([\w.]+)', str(err))
        return OVSSWeightsError(
            f'the BLIP weights in "{name}" do not fit its config: '
            f'{len(sizes) or "some"} tensors differ in shape (e.g. '
            f'{", ".join(sizes[:3])}). The folder mixes the config.json of '
            'one model with the weights of another: copy the whole folder '
            'of one checkpoint again (the ITM models are listed in '
            'mmseg_ovss.blip.loading.BLIP_ITM_MODELS).')
    if osp.isdir(name):
        return OVSSWeightsError(
            f'cannot load BLIP ITM weights from the folder "{name}" '
            f'({type(err).__name__}: {err}). It must hold config.json, the '
            'weights (model.safetensors or pytorch_model.bin) and the '
            'tokenizer files, as written by `save_pretrained` or '
            '`huggingface-cli download`.')
    return OVSSWeightsError(
        f'cannot load the BLIP ITM weights "{name}" ({type(err).__name__}: '
        f'{err}). ' + _fetch_hint(name))


def _from_hub(load: Callable[[bool], object], name: str,
              local_files_only: bool, what: str = 'BLIP ITM',
              hint: Optional[Callable[[str], str]] = None):
    """``load(local_files_only)`` from a folder, the cache, or the hub.

    The cache is tried first; a download is attempted only when the hub
    answers within a few seconds (huggingface_hub retries an unreachable
    hub for about a minute per file).
    """
    if local_files_only or osp.isdir(name):
        return load(True)
    try:
        return load(True)
    except OSError:
        pass
    endpoint = hf_endpoint()
    reason = unreachable(endpoint)
    if reason:
        raise OVSSWeightsError(
            f'cannot download the {what} weights "{name}": they are not '
            f'in the Hugging Face cache and {endpoint} is unreachable '
            f'({reason}; behind a proxy? set HTTPS_PROXY). '
            + (hint or _fetch_hint)(name))
    return load(False)


def load_blip_itm(pretrained: Union[str, dict, None] = 'large-flickr',
                  config: Optional[dict] = None,
                  tokenizer: Optional[str] = None,
                  fix_config: bool = True,
                  local_files_only: Optional[bool] = None,
                  seed: Optional[int] = 0) -> Tuple:
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
        local_files_only: never contact the hub; defaults to True when
            ``HF_HUB_OFFLINE`` is set. Otherwise the cache is tried first
            and an unreachable hub fails within seconds.
        seed: seed of the random weights (``pretrained=None``), the same in
            every process; the global RNG is left as it was. None draws
            them from torch's global RNG.
    """
    from transformers import (AutoTokenizer, BlipConfig,
                              BlipForImageTextRetrieval)
    if local_files_only is None:
        local_files_only = hub_offline()
    if pretrained is None:
        if config is None:
            raise OVSSConfigError(
                'BLIP needs either `pretrained` (hub id or local folder) or '
                '`config` (BlipConfig arguments for random weights).')
        if tokenizer is None:
            raise OVSSConfigError(
                'a randomly initialised BLIP needs `tokenizer` (a folder with '
                'a BERT vocab.txt, e.g. from mmseg_ovss.testing.tiny_blip).')
        if seed is None:
            model = BlipForImageTextRetrieval(BlipConfig(**config))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
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

        def load(local_only: bool):
            blip_config = BlipConfig.from_pretrained(
                name, local_files_only=local_only)
            if fix_config:
                fix_blip_config(blip_config)
            return BlipForImageTextRetrieval.from_pretrained(
                name, config=blip_config, local_files_only=local_only)

        try:
            model = _from_hub(load, name, local_files_only)
        except OVSSWeightsError:
            raise
        except (OSError, ValueError, RuntimeError) as err:
            raise _weights_error(name, err) from err
        tokenizer = tokenizer or name
    try:
        tok = _from_hub(lambda local_only: AutoTokenizer.from_pretrained(
            tokenizer, local_files_only=local_only), tokenizer,
            local_files_only)
    except OVSSWeightsError:
        raise
    except (OSError, ValueError) as err:
        raise _weights_error(tokenizer, err) from err
    model.eval()
    model.requires_grad_(False)
    return model, tok
