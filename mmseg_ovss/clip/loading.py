"""Build open_clip models from a pretrained tag, a local file or nothing.

The one place where the package creates a CLIP model (the segmentors, the
PnP-OVSS reward, the tiny test models all come here). Weights load only
through open_clip's own mechanisms:

* ``pretrained='openai'`` (or ``'laion2b_s34b_b88k'`` ...): a tag resolved by
  open_clip's download cache (``cache_dir`` or the Hugging Face cache). When
  the weights are not cached and the hub does not answer within a few
  seconds, the error comes at once (huggingface_hub would retry for about a
  minute) and says how to pass a local file;
* ``checkpoint='/path/ViT-B-16.pt'``: a local file (an OpenAI TorchScript
  archive, an open_clip state dict, or a ``{'state_dict': ...}`` dict),
  loaded safely: tensors and plain containers only (``weights_only``; a
  TorchScript archive is read by ``torch.jit.load``, which runs no pickled
  Python). A file that pickles other objects is refused unless it is
  trusted on purpose (``trusted=True``, config ``clip.trusted=True``);
* neither, with ``random_init=True``: random weights (tests, benchmarks),
  the same in every process (``seed``).

The activation follows the weights: OpenAI's were trained with QuickGELU,
which open_clip's ``ViT-*`` configs do not use (it only warns).
"""
import logging
import os
import pickle
import re
import threading
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Optional

import open_clip
import torch
from torch import nn

from mmseg_ovss.utils.errors import OVSSConfigError, OVSSWeightsError

PRECISIONS = ('fp32', 'fp16', 'bf16')
#: Seed of ``random_init`` weights: two processes build the same model.
DEFAULT_RANDOM_INIT_SEED = 0
#: Seconds the hub gets to answer before an uncached download is given up
#: (environment variable ``OVSS_HUB_TIMEOUT`` overrides it).
HUB_TIMEOUT = 5.0
_LOCAL_FILE_HINT = ('clip.checkpoint=/path/to/file (tools: --cfg-options '
                    'model.clip.checkpoint=/path)')


def _quick_gelu_for(model_name: str, pretrained: Optional[str]) -> bool:
    if not pretrained:
        return False
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    return bool(cfg.get('quick_gelu', False))


# -------------------------------------------------------------- the hub
def hub_timeout() -> float:
    value = os.environ.get('OVSS_HUB_TIMEOUT', '')
    try:
        return float(value) if value else HUB_TIMEOUT
    except ValueError:
        raise OVSSConfigError(
            f'OVSS_HUB_TIMEOUT={value!r} must be a number of seconds.')


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (as huggingface_hub reads it)."""
    value = os.environ.get('HF_HUB_OFFLINE', '')
    return value.strip().lower() not in ('', '0', 'false', 'no', 'off')


def hf_endpoint() -> str:
    """The Hugging Face endpoint huggingface_hub talks to."""
    try:
        from huggingface_hub import constants
        return constants.ENDPOINT
    except ImportError:
        return os.environ.get('HF_ENDPOINT', 'https://huggingface.co')


def unreachable(url: str, timeout: Optional[float] = None) -> Optional[str]:
    """Why ``url`` did not answer one HEAD request in time, or None.

    Any HTTP answer (also an error status) means the server is reachable.
    The request runs in a thread so that a slow name lookup is bounded too.
    """
    timeout = hub_timeout() if timeout is None else timeout
    outcome = {}

    def probe():
        try:
            request = urllib.request.Request(url, method='HEAD')
            with urllib.request.urlopen(request, timeout=timeout):
                pass
            outcome['ok'] = True
        except urllib.error.HTTPError:
            outcome['ok'] = True
        except Exception as err:  # URLError, timeouts, socket errors
            outcome['error'] = err

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    if outcome.get('ok'):
        return None
    if 'error' in outcome:
        err = outcome['error']
        return f'{type(err).__name__}: {getattr(err, "reason", err)}'
    return f'no answer within {timeout:g} s'


def _tag_files(pretrained_cfg: dict, cache_dir: Optional[str]):
    """Where open_clip looks for a tag's weights: ``(cached, server)``.

    ``cached`` is True when a download would be served from the cache;
    ``server`` the URL a download would contact.
    """
    from open_clip import constants
    hub = pretrained_cfg.get('hf_hub', '')
    if hub and open_clip.pretrained.has_hf_hub():
        from huggingface_hub import try_to_load_from_cache
        repo, filename = os.path.split(hub)
        filename = filename or constants.HF_WEIGHTS_NAME
        names = [filename]
        if filename == constants.HF_WEIGHTS_NAME:
            names.insert(0, constants.HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith(('.bin', '.pth')):
            names.insert(0, filename[:-4] + '.safetensors')
        cached = any(isinstance(try_to_load_from_cache(
            repo, name, cache_dir=cache_dir), str) for name in names)
        return cached, hf_endpoint()
    url = pretrained_cfg.get('url', '')
    if url:
        folder = cache_dir or os.path.expanduser('~/.cache/clip')
        server = re.match(r'^[a-z]+://[^/]+', url)
        return os.path.isfile(os.path.join(folder, os.path.basename(url))), \
            server.group(0) if server else None
    return True, None


def _download_error(model_name: str, pretrained: str, reason: str,
                    hint: str) -> OVSSWeightsError:
    return OVSSWeightsError(
        f'cannot get the CLIP weights {model_name!r} / {pretrained!r}: '
        f'{reason}. Download them on a machine with network access (e.g. '
        f"open_clip.create_model('{model_name}', pretrained='{pretrained}') "
        'fills the cache; copy the file it reports) and pass the local file '
        f'as {hint}, or use --random-init to run without weights')


def check_tag_available(model_name: str, pretrained: str,
                        cache_dir: Optional[str] = None,
                        hint: str = _LOCAL_FILE_HINT) -> None:
    """Fail fast when a tag's weights are neither cached nor downloadable."""
    pretrained_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    cached, server = _tag_files(pretrained_cfg, cache_dir)
    if cached or server is None:
        return
    if hub_offline():
        raise _download_error(model_name, pretrained, 'they are not in the '
                              'cache and HF_HUB_OFFLINE is set', hint)
    reason = unreachable(server)
    if reason:
        raise _download_error(
            model_name, pretrained, f'they are not in the cache and '
            f'{server} is unreachable ({reason}; behind a proxy? set '
            'HTTPS_PROXY)', hint)


# ---------------------------------------------------------- load errors
_SIZE_MISMATCH = re.compile(
    r'size mismatch for ([\w.]+): copying a param with shape '
    r'torch\.Size\(\[([\d, ]*)\]\) from checkpoint, the shape in current '
    r'model is torch\.Size\(\[([\d, ]*)\]\)')


def _architectures_like(conv_shape) -> list:
    """open_clip ViT configs whose patch embedding has this shape."""
    width, _, patch = conv_shape[0], conv_shape[1], conv_shape[2]
    names = []
    for name in open_clip.list_models():
        vision = (open_clip.get_model_config(name) or {}).get('vision_cfg',
                                                              {})
        if vision.get('width') == width and \
                vision.get('patch_size') == patch:
            names.append(name)
    return names


def weights_mismatch(err: Exception, model_name: str,
                     source: str) -> Optional[OVSSWeightsError]:
    """A clear error when ``err`` says the weights are of another
    architecture (shapes or keys differ), else None."""
    text = str(err)
    if 'Error(s) in loading state_dict' not in text:
        return None
    sizes = _SIZE_MISMATCH.findall(text)
    parts = [f'the weights in {source!r} do not fit {model_name}']
    if sizes:
        examples = '; '.join(f'{k}: file ({a}), model ({b})'
                             for k, a, b in sizes[:3])
        parts.append(f'{len(sizes)} tensors differ in shape (e.g. '
                     f'{examples})')
        conv = dict((k, a) for k, a, _ in sizes).get('visual.conv1.weight')
        if conv:
            shape = [int(v) for v in conv.split(',')]
            like = _architectures_like(shape)
            parts.append(f'the file holds a vision tower of width '
                         f'{shape[0]}, patch {shape[2]}'
                         + (f' (e.g. {", ".join(like[:4])})' if like else ''))
    if 'Missing key(s)' in text or 'Unexpected key(s)' in text:
        parts.append('some keys are missing or unexpected (another depth or '
                     'kind of model)')
    return OVSSWeightsError(
        '; '.join(parts) + '. Set clip.model_name to the architecture the '
        'file was saved from, or pass the weights of this one.')


def _file_error(path: str, err: Optional[Exception], model_name: str,
                problem: Optional[str] = None) -> OVSSWeightsError:
    from mmseg_ovss.engine.checkpoint import checkpoint_file_problem
    problem = problem or checkpoint_file_problem(path) or (
        f'cannot be read ({type(err).__name__}: {err})')
    return OVSSWeightsError(
        f'CLIP checkpoint "{path}" {problem}. Pass an OpenAI TorchScript '
        f'file (e.g. ViT-B-16.pt) or an open_clip state dict of {model_name}; '
        'if it was copied or downloaded, copy it again.')


def is_torchscript_archive(path: str) -> bool:
    """Whether ``path`` is a TorchScript zip (OpenAI's CLIP files), which
    ``torch.load`` hands to ``torch.jit.load`` (``constants.pkl`` at the
    archive's top folder, torch's own test)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.split('/')[1:] == ['constants.pkl'] for name in names)


def _untrusted_file_error(path: str, err: Exception,
                          hint: str) -> OVSSWeightsError:
    from mmseg_ovss.engine.checkpoint import refused_global
    return OVSSWeightsError(
        f'CLIP checkpoint "{path}" holds Python objects outside the safe '
        f'types ({refused_global(err)}; torch refuses to unpickle them). If '
        'the file comes from a source you trust, load it with clip.trusted='
        'True (tools: --cfg-options +model.clip.trusted=True; code: '
        'build_clip_model(..., trusted=True)): this unpickles it in full, '
        'which can run any code. Or re-save its tensors: ckpt = torch.load('
        "path, weights_only=False); torch.save(ckpt.get('state_dict', "
        f"ckpt), new_path), and pass the new file as {hint}.")


# --------------------------------------------------------------- build
def _create(model_name, source, precision, device, quick_gelu, cache_dir,
            weights_only=True):
    return open_clip.create_model(
        model_name, pretrained=source, precision=precision, device=device,
        force_quick_gelu=bool(quick_gelu), cache_dir=cache_dir,
        weights_only=weights_only)


def build_clip_model(model_name: str = 'ViT-B-16',
                     pretrained: Optional[str] = 'openai',
                     checkpoint: Optional[str] = None,
                     precision: str = 'fp32',
                     device: str = 'cpu',
                     random_init: bool = False,
                     quick_gelu: Optional[bool] = None,
                     cache_dir: Optional[str] = None,
                     seed: Optional[int] = DEFAULT_RANDOM_INIT_SEED,
                     local_file_hint: str = _LOCAL_FILE_HINT,
                     trusted: bool = False) -> nn.Module:
    """Return an eval-mode, frozen open_clip ``CLIP`` model.

    Args:
        model_name: open_clip architecture (``ViT-B-16``, ``ViT-L-14``, or a
            tiny test model of :mod:`mmseg_ovss.testing.tiny_clip`).
        pretrained: open_clip pretrained tag; its weights are ignored when
            ``checkpoint`` or ``random_init`` is given, its activation is
            kept.
        checkpoint: local weights file.
        precision: ``fp32`` (default), ``fp16`` or ``bf16``.
        random_init: build without weights.
        quick_gelu: force QuickGELU; by default taken from ``pretrained``
            (OpenAI weights were trained with it), also when ``checkpoint``
            is a local copy of those weights or ``random_init`` stands in
            for them; set ``pretrained=None`` for a file of another kind.
        seed: seed of the ``random_init`` weights (the global RNG is left as
            it was); None draws them from torch's global RNG.
        local_file_hint: how the caller's user passes a local file (error
            messages).
        trusted: ``checkpoint`` comes from a source you trust: unpickle it
            in full when it holds objects other than tensors (the safe
            loader refuses them). Unpickling can run any code.
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
    if quick_gelu is None:
        # local copies of tagged weights and their random stand-ins keep
        # the tag's activation
        quick_gelu = _quick_gelu_for(model_name, pretrained)
    source = None
    if random_init:
        source = None
    elif checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise OVSSWeightsError(
                f'CLIP checkpoint {str(path)!r} does not exist; pass the path '
                'of a local open_clip/OpenAI weights file (e.g. ViT-B-16.pt) '
                f'as {local_file_hint}, or use random_init=True / '
                '--random-init')
        from mmseg_ovss.engine.checkpoint import checkpoint_file_problem
        problem = checkpoint_file_problem(str(path))
        if problem:
            raise _file_error(str(path), None, model_name, problem)
        source = str(path)
    elif pretrained:
        if open_clip.get_pretrained_cfg(model_name, pretrained) in (None, {}):
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise OVSSConfigError(
                f'unknown pretrained tag {pretrained!r} for {model_name}; '
                f'known tags: {tags}, or pass a local file as checkpoint')
        check_tag_available(model_name, pretrained, cache_dir,
                            local_file_hint)
        source = pretrained
    else:
        raise OVSSWeightsError(
            'no CLIP weights configured: set clip.pretrained (e.g. '
            "'openai'), clip.checkpoint='/path/to/ViT-B-16.pt', or "
            'random_init=True')
    if source is None:
        model = _random_model(model_name, precision, device, quick_gelu,
                              cache_dir, seed)
    else:
        model = _load_model(model_name, source, precision, device,
                            quick_gelu, cache_dir, pretrained,
                            local_file_hint, trusted)
    model.eval()
    model.requires_grad_(False)
    return model


def _random_model(model_name, precision, device, quick_gelu, cache_dir,
                  seed):
    logging.getLogger(__name__).info(
        'CLIP %s built with random weights (seed %s)', model_name, seed)
    if seed is None:
        return _create(model_name, None, precision, device, quick_gelu,
                       cache_dir)
    # open_clip initialises on the CPU, then moves the model to ``device``
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _create(model_name, None, precision, device, quick_gelu,
                       cache_dir)


def _load_model(model_name, source, precision, device, quick_gelu,
                cache_dir, pretrained, hint, trusted=False):
    is_file = Path(source).is_file()
    # torch.load hands a TorchScript archive to torch.jit.load only with
    # weights_only=False; pickles are read weights-only unless trusted
    weights_only = not (is_file and (trusted or
                                     is_torchscript_archive(source)))
    if is_file and trusted:
        logging.getLogger(__name__).warning(
            'loading the trusted CLIP checkpoint %s with full unpickling',
            source)
    try:
        with warnings.catch_warnings():
            # "torch.load received a TorchScript archive": the intended path
            warnings.filterwarnings('ignore', message='.*TorchScript archive')
            return _create(model_name, source, precision, device, quick_gelu,
                           cache_dir, weights_only)
    except (RuntimeError, OSError, ValueError, EOFError,
            pickle.UnpicklingError) as err:
        mismatch = weights_mismatch(err, model_name, source)
        if mismatch is not None:
            raise mismatch from err
        if is_file and 'Weights only load failed' in str(err):
            raise _untrusted_file_error(source, err, hint) from err
        if is_file:
            raise _file_error(source, err, model_name) from err
        raise _download_error(
            model_name, pretrained, f'open_clip could not load them ({err})',
            hint) from err
