"""Checked checkpoint loading for mmengine runners.

* torch >= 2.6 loads with ``weights_only=True`` by default and mmengine 0.10.7
  does not pass the argument, so its own checkpoints fail on the objects it
  pickles into ``meta`` (the message hub's ``HistoryBuffer``, numpy scalars
  and arrays). mmengine's local-file loader is replaced by one that
  allow-lists exactly those types, only while it loads.
* The same loader names the file and the problem when it is empty, cut short
  (an interrupted save or copy), or not a PyTorch checkpoint at all (a text
  file, an image, a zip archive of something else), instead of a bare
  unpickling error.
* A file that pickles other objects (a third party's ``meta``: mmcv 1.x's
  ``Config``, numpy objects of mmseg 0.x checkpoints) is refused with an
  error that names the object and the opt-in: ``--trust-checkpoint`` of
  ``tools/test.py`` / ``tools/train.py``, the config key
  ``trust_checkpoint = True``, or :func:`trusted_checkpoint` in code. Only a
  trusted file is unpickled in full; there is no silent fallback.
* :class:`CheckpointKeysHook` refuses a checkpoint that matches none or few
  of the model's keys; mmengine loads with ``strict=False`` and only warns,
  so a wrong checkpoint used to evaluate a randomly initialised model.
* :func:`resolve_resume` finds what ``tools/train.py --resume`` continues
  from, or says why there is nothing (mmengine starts from scratch);
  :func:`checkpoint_seed` reads the seed of the run that wrote it, which the
  resumed run must start with (mmengine restores it only after building the
  data sampler from a new one).
"""
import contextlib
import glob
import logging
import os.path as osp
import pickle
import re
import types
import zipfile
from collections import Counter
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner.checkpoint import CheckpointLoader
from mmseg.registry import HOOKS

from mmseg_ovss.utils.errors import OVSSConfigError, OVSSWeightsError

#: Default of ``checkpoint_min_match``: the fraction of the model's expected
#: keys a checkpoint must provide (with the same shapes).
DEFAULT_MIN_MATCH = 0.5
#: mmengine's ``Runner.load_checkpoint`` strips this prefix before loading.
_REVISE_KEYS = [(r'^module.', '')]
_EXAMPLES = 3
#: Top-level config key (``--trust-checkpoint`` of the tools): the checkpoint
#: the runner loads (``load_from``, ``--resume``) may be unpickled in full.
TRUST_CHECKPOINT_KEY = 'trust_checkpoint'
#: How a user opts in, for error messages.
TRUST_HINT = ('--trust-checkpoint (tools/test.py, tools/train.py) or the '
              f'config key {TRUST_CHECKPOINT_KEY} = True')
_trusted_files: Dict[str, int] = {}


def mmengine_checkpoint_globals() -> list:
    """Non-tensor globals found in checkpoints saved by mmengine runners."""
    dtype_classes = [type(np.dtype(t)) for t in (
        np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
        np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)]
    return [HistoryBuffer, getattr, np.ndarray, np.dtype,
            np._core.multiarray._reconstruct, np._core.multiarray.scalar
            ] + dtype_classes


# ------------------------------------------------------------ file format
_MAGIC = ((b'\xff\xd8\xff', 'a JPEG image'),
          (b'\x89PNG\r\n\x1a\n', 'a PNG image'),
          (b'GIF8', 'a GIF image'), (b'II*\x00', 'a TIFF image'),
          (b'MM\x00*', 'a TIFF image'), (b'%PDF', 'a PDF document'),
          (b'\x1f\x8b', 'a gzip archive'), (b'BZh', 'a bzip2 archive'),
          (b'\xfd7zXZ', 'an xz archive'), (b'7z\xbc\xaf', 'a 7-zip archive'),
          (b'\x93NUMPY', 'a numpy .npy array'))


def _is_safetensors(head: bytes, size: int) -> Optional[bool]:
    """True for a complete safetensors header, False for a cut one, None
    when the bytes are not a safetensors file."""
    if len(head) < 9 or head[8:9] != b'{':
        return None
    header_len = int.from_bytes(head[:8], 'little')
    if header_len <= 0 or header_len > 100_000_000:
        return None
    return 8 + header_len <= size


def checkpoint_file_problem(path: str) -> Optional[str]:
    """What is wrong with a weights file, or None when it looks loadable.

    Reads the first bytes and, for zip archives (torch's format since 1.6,
    also OpenAI's TorchScript CLIP files), the archive's directory at the
    end of the file, which an interrupted save or copy never wrote. A legacy
    (pickle) or safetensors file is checked as far as its header goes.
    """
    size = osp.getsize(path)
    if size == 0:
        return 'is empty (0 bytes)'
    with open(path, 'rb') as f:
        head = f.read(512)
    if head.startswith((b'PK\x03\x04', b'PK\x05\x06')):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return (f'is truncated or corrupt: a zip archive of {size} bytes '
                    'whose directory (written last) is missing, as after an '
                    'interrupted save or copy')
        if not any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
            return (f'is a zip archive but not a PyTorch checkpoint (no '
                    f'data.pkl among its {len(names)} entries, e.g. '
                    f'{names[:_EXAMPLES]})')
        return None
    if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04',
                                              b'\x05'):
        return None  # a legacy pickle: only loading can tell
    safetensors = _is_safetensors(head, size)
    if safetensors is not None:
        return None if safetensors else (
            f'is a truncated safetensors file ({size} bytes, shorter than '
            'its own header says)')
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return f'is {kind}, not a PyTorch checkpoint'
    if head.startswith(b'version https://git-lfs'):
        return ('is a Git LFS pointer, not the weights (run `git lfs pull` '
                'in its repository)')
    # a multi-byte character may be cut at the end of the 512 bytes
    text = head.decode('utf-8', errors='replace')
    body = text[:-3] if len(head) == 512 else text
    if all(c.isprintable() or c in '\r\n\t' for c in body):
        return (f'is a text file (it starts with {text[:40]!r}), not a '
                'PyTorch checkpoint')
    return (f'is not a PyTorch checkpoint (unknown format; it starts with '
            f'{head[:8]!r})')


def bad_checkpoint_error(path: str, problem: str,
                         fix: Optional[str] = None) -> OVSSWeightsError:
    """The error for a file that :func:`checkpoint_file_problem` refused."""
    fix = fix or ('Pass a .pth file saved by tools/train.py (or torch.save); '
                  'if the file was copied or downloaded, copy it again.')
    return OVSSWeightsError(f'checkpoint "{path}" {problem}. {fix}')


def check_checkpoint_file(path: str) -> None:
    """Raise :class:`OVSSWeightsError` when ``path`` is not a loadable
    checkpoint file (missing, empty, cut short or of another format)."""
    if not osp.isfile(path):
        raise OVSSWeightsError(
            f'checkpoint "{path}" does not exist; pass the path of a .pth '
            'file saved by tools/train.py (a training-free model needs '
            'none).')
    problem = checkpoint_file_problem(path)
    if problem:
        raise bad_checkpoint_error(path, problem)


# ------------------------------------------------------- trusted files
@contextlib.contextmanager
def trusted_checkpoint(path: Optional[str]) -> Iterator[None]:
    """Within the block, the safe loader may unpickle ``path`` in full.

    For a third party's checkpoint whose ``meta`` holds objects outside the
    allow-list (an mmseg 0.x release: mmcv 1.x's ``Config``, numpy
    objects); only for files from a source you trust, since unpickling can
    run any code. ``None`` trusts nothing (a no-op).
    """
    key = osp.realpath(osp.expanduser(str(path))) if path else None
    if key is not None:
        _trusted_files[key] = _trusted_files.get(key, 0) + 1
    try:
        yield
    finally:
        if key is not None:
            _trusted_files[key] -= 1
            if not _trusted_files[key]:
                del _trusted_files[key]


def add_trust_argument(parser) -> None:
    """``--trust-checkpoint`` of tools/test.py and tools/train.py."""
    parser.add_argument(
        '--trust-checkpoint', action='store_true',
        help='the checkpoint (load_from, --resume) comes from a source you '
        'trust: load it even if it pickles objects outside the safe '
        "allow-list (e.g. an mmseg 0.x release's meta); same as the config "
        f'key {TRUST_CHECKPOINT_KEY} = True. Unpickling can run any code.')


def is_trusted_checkpoint(path: str) -> bool:
    """Whether ``path`` is inside a :func:`trusted_checkpoint` block."""
    return osp.realpath(osp.expanduser(str(path))) in _trusted_files


@contextlib.contextmanager
def trusted_checkpoint_of(cfg) -> Iterator[None]:
    """:func:`trusted_checkpoint` for the file a runner of ``cfg`` loads,
    when the config sets ``trust_checkpoint = True``."""
    trusted = cfg.get(TRUST_CHECKPOINT_KEY, False)
    if not isinstance(trusted, bool):
        raise OVSSConfigError(
            f'{TRUST_CHECKPOINT_KEY}={trusted!r} must be True or False (True '
            'unpickles the checkpoint of load_from/--resume in full: only '
            'for a file from a source you trust).')
    path = cfg.get('load_from') if trusted else None
    with trusted_checkpoint(path if path and '://' not in str(path)
                            else None):
        yield


class UnresolvedObject:
    """What a trusted checkpoint holds where its pickle names a class that
    cannot be imported here (mmcv 1.x's ``mmcv.utils.config.Config`` in the
    ``meta`` of an mmseg 0.x release): the pickled arguments and state,
    kept for inspection. ``pickled_name`` is the missing global."""

    pickled_name = ''
    # what the pickle gave: constructor arguments (REDUCE), state (BUILD)
    args, kwargs, state = (), {}, None

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f'<unresolved {self.pickled_name}>'


class _TrustedUnpickler(pickle.Unpickler):
    """Full unpickling; a global of a missing module becomes an
    :class:`UnresolvedObject` type named after it."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            full = f'{module}.{name}'
            logging.getLogger(__name__).warning(
                'trusted checkpoint: %s cannot be imported here; kept as an '
                'UnresolvedObject', full)
            return type(name, (UnresolvedObject,),
                        dict(pickled_name=full, __module__=__name__))


def _trusted_pickle_module() -> types.ModuleType:
    module = types.ModuleType('mmseg_ovss_trusted_pickle')
    module.Unpickler = _TrustedUnpickler
    module.load = lambda file, **kwargs: _TrustedUnpickler(file,
                                                           **kwargs).load()
    return module


def refused_global(err: Exception) -> Optional[str]:
    """The global a weights-only load refused (``'mmcv.Config'``), or None
    when ``err`` is not such a refusal."""
    text = str(err)
    if 'Weights only load failed' not in text:
        return None
    match = re.search(r'GLOBAL (\S+) was not an allowed global', text)
    return match.group(1) if match else 'an object of an unknown kind'


def load_trusted(filename: str, map_location=None):
    """Unpickle a trusted checkpoint in full (any Python object)."""
    logging.getLogger(__name__).warning(
        'loading the trusted checkpoint %s with full unpickling', filename)
    return torch.load(filename, map_location=map_location,
                      weights_only=False,
                      pickle_module=_trusted_pickle_module())


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename, map_location):
    """mmengine's local loader: the allow-list above, a clear error for a
    file that is not a loadable checkpoint, full unpickling only for a file
    trusted on purpose (:func:`trusted_checkpoint`)."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint "{filename}" can not be found.')
    check_checkpoint_file(filename)
    try:
        with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
            return torch.load(filename, map_location=map_location,
                              weights_only=True)
    except (EOFError, RuntimeError, ValueError, OSError,
            pickle.UnpicklingError) as err:
        problem = checkpoint_file_problem(filename)
        refused = refused_global(err)
        if problem is None and refused is not None:
            if is_trusted_checkpoint(filename):
                return load_trusted(filename, map_location)
            problem = (f'holds Python objects outside the allow-list of safe '
                       f'types ({refused}; torch refuses to unpickle them)')
            fix = ('If the file comes from a source you trust (e.g. the '
                   f'released weights of a paper), load it with {TRUST_HINT}: '
                   'this unpickles it in full, which can run any code. Or '
                   "re-save its tensors: torch.save({'state_dict': torch.load("
                   "path, weights_only=False)['state_dict']}, new_path).")
            raise bad_checkpoint_error(filename, problem, fix) from err
        if problem is None and isinstance(err, RuntimeError) and (
                'device' in str(err) or 'CUDA' in str(err)):
            raise  # a sound file for another device: map_location's error
        problem = problem or (f'cannot be read ({type(err).__name__}: '
                              f'{err}); it may be cut short or corrupt')
        raise bad_checkpoint_error(filename, problem) from err


# ---------------------------------------------------------- key matching
def _state_dict_of(checkpoint) -> Dict[str, object]:
    """The state dict mmengine loads from a checkpoint, keys revised."""
    state = checkpoint
    if isinstance(checkpoint, dict) and 'state_dict' in checkpoint:
        state = checkpoint['state_dict']
    if not isinstance(state, dict):
        return {}
    out = {}
    for key, value in state.items():
        key = str(key)
        for pattern, replacement in _REVISE_KEYS:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def apply_legacy_keys(model: torch.nn.Module,
                      state: Dict[str, object]) -> Dict[str, object]:
    """``state`` with the old keys that ``model``'s modules rename when they
    load renamed the same way.

    A module whose ``_load_from_state_dict`` accepts an older key layout
    declares it as ``legacy_state_keys`` (old key -> new key, relative to
    the module, e.g. ``GuidedShiftWindowMSA``: ``q.weight`` ->
    ``w_msa.q.weight``); an old key is renamed when the new one is absent,
    as the module's own hook does."""
    out = dict(state)
    for prefix, module in model.named_modules():
        aliases = getattr(module, 'legacy_state_keys', None)
        if not aliases:
            continue
        prefix = f'{prefix}.' if prefix else ''
        for old, new in aliases.items():
            if prefix + old in out and prefix + new not in out:
                out[prefix + new] = out.pop(prefix + old)
    return out


def expected_keys(model: torch.nn.Module) -> List[str]:
    """State-dict keys a checkpoint of ``model`` must provide.

    Trainable parameters, and the persistent buffers of modules with a
    trainable parameter of their own (a trained BatchNorm's statistics).
    Frozen parts (an open_clip tower built from its own weights) may be
    absent from a checkpoint on purpose; a model without any trainable
    parameter (training-free) expects all its keys.
    """
    keys = []
    for prefix, module in model.named_modules():
        prefix = f'{prefix}.' if prefix else ''
        own = list(module.named_parameters(recurse=False))
        trainable = [n for n, p in own if p.requires_grad]
        keys += [prefix + n for n in trainable]
        if trainable:
            keys += [prefix + n for n, _ in module.named_buffers(recurse=False)
                     if n not in module._non_persistent_buffers_set]
    state_keys = [k for k in model.state_dict()
                  if not k.endswith('num_batches_tracked')]
    if not keys:
        return state_keys
    present = set(state_keys)
    return [k for k in keys if k in present
            and not k.endswith('num_batches_tracked')]


class KeyMatch:
    """How the keys of a checkpoint fit a model (what mmengine would load)."""

    def __init__(self, model: torch.nn.Module, checkpoint):
        self.state = apply_legacy_keys(model, _state_dict_of(checkpoint))
        self.top_level = (list(checkpoint) if isinstance(checkpoint, dict)
                          else [])
        model_state = {k: v for k, v in model.state_dict().items()
                       if not k.endswith('num_batches_tracked')}
        self.model_keys = list(model_state)
        self.expected = expected_keys(model)
        self.shape_mismatch = []
        self.matched = []
        for key in self.expected:
            if key not in self.state:
                continue
            value = self.state[key]
            shape = tuple(getattr(value, 'shape', ()))
            if shape == tuple(model_state[key].shape):
                self.matched.append(key)
            else:
                self.shape_mismatch.append((key, shape,
                                            tuple(model_state[key].shape)))
        self.missing = [k for k in self.model_keys if k not in self.state]
        self.unexpected = [k for k in self.state if k not in model_state
                           and not k.endswith('num_batches_tracked')]

    @property
    def fraction(self) -> float:
        return len(self.matched) / max(1, len(self.expected))

    def prefix_hint(self) -> Optional[str]:
        """A prefix that, added or removed, would make the keys match."""
        model_set = set(self.model_keys)
        ckpt_keys = list(self.state)[:500]
        strip, add = Counter(), Counter()
        for key in ckpt_keys:
            parts = key.split('.')
            for i in range(1, min(len(parts), 4)):
                if '.'.join(parts[i:]) in model_set:
                    strip['.'.join(parts[:i]) + '.'] += 1
                    break
        suffixes = {}
        for key in self.model_keys:
            parts = key.split('.')
            for i in range(1, min(len(parts), 4)):
                suffixes.setdefault('.'.join(parts[i:]),
                                    '.'.join(parts[:i]) + '.')
        for key in ckpt_keys:
            if key not in model_set and key in suffixes:
                add[suffixes[key]] += 1
        best = None
        for kind, counter in (('strip', strip), ('add', add)):
            if counter:
                prefix, count = counter.most_common(1)[0]
                if count >= max(1, len(ckpt_keys) // 2) and (
                        best is None or count > best[2]):
                    best = (kind, prefix, count)
        if best is None:
            return None
        kind, prefix, count = best
        if kind == 'strip':
            return (f'{count} checkpoint keys match once the prefix '
                    f'{prefix!r} is removed; re-save the weights without '
                    f"it: torch.save({{'state_dict': {{k.removeprefix("
                    f"{prefix!r}): v for k, v in sd.items()}}}}, new_path)")
        return (f'{count} checkpoint keys match once the prefix {prefix!r} '
                'is added: the file holds the weights of a part of the model'
                + (' (the CLIP tower: pass it as model.clip.checkpoint '
                   'instead)' if 'clip' in prefix else '') +
                f"; or re-save them with it: torch.save({{'state_dict': "
                f"{{{prefix!r} + k: v for k, v in sd.items()}}}}, new_path)")

    def nested_hint(self) -> Optional[str]:
        """Weights stored under another top-level key than 'state_dict'."""
        if len(self.matched) or not self.top_level:
            return None
        containers = [k for k in self.top_level if k != 'state_dict'
                      and isinstance(self.state.get(str(k)), dict)]
        if containers:
            return (f'the checkpoint holds the containers {containers}; if '
                    f'the weights are under {containers[0]!r}, re-save them '
                    f"as torch.save({{'state_dict': ckpt[{containers[0]!r}]}},"
                    ' new_path)')
        return None

    def describe(self, filename: str, min_fraction: float,
                 model_name: str) -> str:
        def examples(keys):
            keys = list(keys)
            return ', '.join(keys[:_EXAMPLES]) + (', ...' if len(keys) >
                                                  _EXAMPLES else '')
        lines = [
            f'checkpoint "{filename}" does not fit the model {model_name}: '
            f'{len(self.matched)} of its {len(self.expected)} expected keys '
            f'match ({self.fraction:.0%}; at least {min_fraction:.0%} '
            f'needed, checkpoint_min_match={min_fraction:g}).',
            f'missing from the checkpoint: {len(self.missing)}'
            + (f' (e.g. {examples(self.missing)})' if self.missing else ''),
            f'unexpected in the checkpoint: {len(self.unexpected)}'
            + (f' (e.g. {examples(self.unexpected)})' if self.unexpected
               else ''),
            f'different shape: {len(self.shape_mismatch)}'
            + (' (e.g. ' + '; '.join(
                f'{k}: checkpoint {a}, model {b}'
                for k, a, b in self.shape_mismatch[:_EXAMPLES]) + ')'
               if self.shape_mismatch else ''),
        ]
        hints = [h for h in (self.nested_hint(), self.prefix_hint()) if h]
        if self.shape_mismatch and len(self.shape_mismatch) >= len(
                self.matched):
            hints.append('most shared keys differ in shape: the checkpoint '
                         'is of another architecture (wrong config? e.g. a '
                         'ViT-L checkpoint for a ViT-B config)')
        if not hints:
            hints.append('is it a checkpoint of this config? (the keys of '
                         'another model, or a file of another kind)')
        lines.append('Likely fix: ' + '; '.join(hints) + '. To accept a '
                     'partial checkpoint on purpose, lower the minimum: '
                     '--cfg-options +checkpoint_min_match=0.1')
        return '\n'.join(lines)


@HOOKS.register_module()
class CheckpointKeysHook(Hook):
    """Refuse a checkpoint that matches few of the model's expected keys.

    Runs on mmengine's ``after_load_checkpoint`` (both ``load_from`` and
    ``resume``), before the weights are copied into the model.

    Args:
        min_fraction: least fraction of :func:`expected_keys` that the
            checkpoint must provide with the right shape.
        filename: the checkpoint's path, for the message.
    """

    priority = 'VERY_HIGH'

    def __init__(self, min_fraction: float = DEFAULT_MIN_MATCH,
                 filename: Optional[str] = None):
        if not 0 <= float(min_fraction) <= 1:
            raise OVSSConfigError(
                f'checkpoint_min_match={min_fraction} must lie in [0, 1] '
                '(the fraction of the model keys a checkpoint must match).')
        self.min_fraction = float(min_fraction)
        self.filename = filename

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model
        # the model the weights go to, unwrapped as mmengine's
        # load_state_dict does (DDP wrappers, a test-time-augmentation model)
        while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
            model = model.module
        match = KeyMatch(model, checkpoint)
        if match.fraction < self.min_fraction:
            raise OVSSWeightsError(match.describe(
                self.filename or 'checkpoint', self.min_fraction,
                type(model).__name__))


def add_checkpoint_check(cfg, filename: str) -> None:
    """Register :class:`CheckpointKeysHook` for ``filename`` in ``cfg``.

    The minimum comes from ``cfg.checkpoint_min_match`` (default
    :data:`DEFAULT_MIN_MATCH`).
    """
    hooks = [h for h in (cfg.get('custom_hooks') or [])
             if h.get('type') != 'CheckpointKeysHook']
    hooks.append(dict(type='CheckpointKeysHook', filename=str(filename),
                      min_fraction=cfg.get('checkpoint_min_match',
                                           DEFAULT_MIN_MATCH)))
    cfg.custom_hooks = hooks


# ---------------------------------------------------------------- resume
def _checkpoint_order(path: str):
    match = re.search(r'(?:iter|epoch)_(\d+)\.pth$', osp.basename(path))
    return (int(match.group(1)) if match else -1, osp.getmtime(path))


def previous_checkpoints(work_dir: str, exclude: str = '') -> List[str]:
    """Loadable ``*.pth`` files of a work dir, latest first."""
    found = [p for p in glob.glob(osp.join(work_dir, '*.pth'))
             if osp.isfile(p) and osp.abspath(p) != osp.abspath(exclude)]
    found.sort(key=_checkpoint_order, reverse=True)
    return [p for p in found if checkpoint_file_problem(p) is None]


def _resume_fix(work_dir: str, exclude: str = '') -> str:
    earlier = previous_checkpoints(work_dir, exclude)
    if earlier:
        return (f'Resume from the previous checkpoint: --resume {earlier[0]}'
                + (f' (also in the work dir: {", ".join(earlier[1:4])})'
                   if len(earlier) > 1 else ''))
    return ('The work dir holds no other loadable checkpoint: start again '
            'without --resume.')


def checkpoint_seed(path: str) -> Optional[int]:
    """The random seed of the run that saved ``path`` (mmengine's
    ``meta['seed']``), or None when it holds none or only a trusted full
    unpickling could read it. The tensors are memory-mapped, not read."""
    with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
        try:
            checkpoint = torch.load(path, map_location='cpu',
                                    weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            return None  # objects outside the allow-list
        except RuntimeError:  # the legacy (non-zip) format cannot be mapped
            checkpoint = torch.load(path, map_location='cpu',
                                    weights_only=True)
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    seed = meta.get('seed') if isinstance(meta, dict) else None
    return None if seed is None else int(seed)


def resolve_resume(work_dir: str, resume: str) -> str:
    """The checkpoint ``tools/train.py --resume [PATH]`` continues from.

    ``resume='auto'`` reads ``<work_dir>/last_checkpoint`` (what mmengine
    does). With nothing to resume mmengine would train from scratch; here
    that is an error: a user who typed ``--resume`` means to continue a run,
    and the usual cause is another work dir than the run's (a different
    ``--work-dir`` or config name); starting over would spend the whole
    schedule and then point that folder's ``last_checkpoint`` at the new
    run. A file that is cut short names the previous checkpoint to resume
    from.
    """
    if resume != 'auto':
        path = osp.expanduser(str(resume))
        if not osp.isfile(path):
            raise OVSSWeightsError(
                f'--resume {path}: the file does not exist. '
                + _resume_fix(osp.dirname(path) or '.', path))
        problem = checkpoint_file_problem(path)
        if problem:
            raise bad_checkpoint_error(
                path, problem, _resume_fix(osp.dirname(path) or '.', path))
        return path
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        if not osp.isdir(work_dir):
            where = 'does not exist'
        else:
            found = previous_checkpoints(work_dir)
            where = (f'has no last_checkpoint file but holds {len(found)} '
                     f'checkpoints; pick one: --resume {found[0]}' if found
                     else 'holds no checkpoint')
        raise OVSSConfigError(
            f'--resume: nothing to resume, the work dir "{work_dir}" '
            f'{where}. Pass the work dir of the run to continue '
            '(--work-dir) or a checkpoint (--resume PATH); to start a new '
            'run drop --resume.')
    with open(pointer) as f:
        path = f.read().strip()
    if not path:
        raise OVSSConfigError(
            f'--resume: {pointer} is empty. ' + _resume_fix(work_dir))
    if not osp.isfile(path):
        raise OVSSWeightsError(
            f'--resume: {pointer} points to "{path}", which does not exist '
            '(a moved work dir or a deleted file?). ' +
            _resume_fix(work_dir, path))
    problem = checkpoint_file_problem(path)
    if problem:
        raise bad_checkpoint_error(
            path, f'(named by {pointer}) {problem}',
            _resume_fix(work_dir, path))
    return path


__all__ = ['CheckpointKeysHook', 'KeyMatch', 'TRUST_CHECKPOINT_KEY',
           'UnresolvedObject', 'apply_legacy_keys', 'add_checkpoint_check', 'add_trust_argument',
           'check_checkpoint_file', 'checkpoint_file_problem',
           'checkpoint_seed',
           'expected_keys', 'is_trusted_checkpoint', 'load_from_local',
           'load_trusted', 'previous_checkpoints', 'refused_global',
           'resolve_resume', 'mmengine_checkpoint_globals',
           'trusted_checkpoint', 'trusted_checkpoint_of']
