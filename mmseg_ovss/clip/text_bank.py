"""A text-embedding bank on disk: each sentence through the text tower once.

The authors' code of SCLIP and FreeCP re-encodes every prompt at every start
(80 templates x 150 ADE classes plus the class descriptions: about 21k
sentences, minutes on a CPU). The bank keeps the L2-normalised embedding of
every sentence a frozen text tower has encoded, in one file per
(weights and architecture digest, dtype, device type), so a second start
reads them back.

The key is the content of the weights, not their source: a digest of every
parameter and buffer of the tower (BLAKE2b over the raw bytes, names and
shapes), computed once per weights version, together with a fingerprint of
what else the embeddings depend on (:func:`architecture_fingerprint`: the
class and settings of every submodule, e.g. GELU or QuickGELU, the pooling,
end-of-text id and context length, a Hugging Face tower's config, the
model name and tokenizer). Fine-tuned, re-initialised or cast weights and
another architecture get another file; embeddings computed on a GPU are not
mixed with CPU ones (their rounding differs). Rows are always computed
without autocast, at the tower's own dtype.

Entries are appended. A writer takes an exclusive lock on a sidecar
``.lock`` file, merges the entries other processes wrote meanwhile and
replaces the file atomically, so an interrupted write leaves the previous
file and concurrent writers keep each other's rows. A failed write (full
disk, read-only folder) warns and leaves no temporary file behind.

Where: ``text_bank='auto'`` uses ``$OVSS_TEXT_BANK`` or
``~/.cache/mmseg_ovss/text_bank``; ``OVSS_TEXT_BANK=off`` (or
``text_bank=None``) turns it off.
"""
import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional,
                    Sequence, Tuple, Union)

import torch
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError

try:  # POSIX; elsewhere writers are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

BANK_ENV = 'OVSS_TEXT_BANK'
DEFAULT_BANK_DIR = Path('~/.cache/mmseg_ovss/text_bank')
OFF_VALUES = ('', '0', 'off', 'none', 'false', 'no')
#: sentences to encode before a progress bar is shown
PROGRESS_MIN_SENTENCES = 2048
#: settings of the tower module itself that the embeddings depend on
#: (open_clip ``CLIP``, ``TextTransformer`` and ``HFTextEncoder`` names)
TOWER_SETTINGS = ('text_pool_type', 'text_eos_id', 'pool_type', 'eos_id',
                  'pad_id', 'use_pad_mask', 'context_length', 'num_pos',
                  'vocab_size', 'width', 'heads', 'output_dim',
                  'output_tokens', 'model_name')
#: submodule attributes that do not change what a module computes
IGNORED_ATTRIBUTES = ('training', 'grad_checkpointing')
_SCALARS = (bool, int, float, str, type(None))


def resolve_bank_dir(spec: Union[None, str, os.PathLike]) -> Optional[Path]:
    """The bank folder of a ``text_bank`` setting, or None when it is off.

    ``'auto'``: ``$OVSS_TEXT_BANK`` when set (``off`` disables), else
    ``~/.cache/mmseg_ovss/text_bank``; a path: that folder.
    """
    if spec is None or spec is False:
        return None
    if not isinstance(spec, (str, os.PathLike)):
        raise OVSSConfigError(
            f"text_bank={spec!r}: use 'auto', a folder path or None (off)")
    if str(spec) == 'auto':
        env = os.environ.get(BANK_ENV)
        if env is not None:
            if env.strip().lower() in OFF_VALUES:
                return None
            return Path(env).expanduser()
        return DEFAULT_BANK_DIR.expanduser()
    if str(spec).strip().lower() in OFF_VALUES:
        return None
    return Path(spec).expanduser()


def weights_digest(module: nn.Module) -> str:
    """BLAKE2b digest of every parameter and buffer of ``module`` (name,
    dtype, shape and bytes; non-persistent buffers such as the causal
    ``attn_mask`` included), hex."""
    if torch.jit.is_tracing():
        raise RuntimeError(
            'weights_digest reads tensor bytes and cannot run under '
            'torch.jit tracing; compute it before tracing')
    digest = hashlib.blake2b(digest_size=20)
    state = module.state_dict(keep_vars=False)
    for name, buffer in module.named_buffers():
        state.setdefault(name, buffer)
    for name, tensor in sorted(state.items()):
        if not isinstance(tensor, Tensor):
            continue
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}'
                      .encode())
        data = tensor.detach().contiguous()
        if data.device.type != 'cpu':
            data = data.cpu()
        # raw bytes (bf16 has no numpy type: view as int16 first)
        raw = data.reshape(-1).view(torch.uint8) if data.numel() else data
        digest.update(raw.numpy().tobytes() if raw.numel() else b'')
    return digest.hexdigest()


def _settings_of(module: nn.Module, names: Optional[Sequence[str]] = None
                 ) -> List[str]:
    """``name=repr`` of a module's scalar attributes (``names``, or every
    public one but :data:`IGNORED_ATTRIBUTES`) and of its Hugging Face
    ``config``."""
    attributes = vars(module)
    keys = names if names is not None else sorted(
        k for k in attributes
        if not k.startswith('_') and k not in IGNORED_ATTRIBUTES)
    out = []
    for key in keys:
        value = attributes.get(key)
        if isinstance(value, (list, tuple)) and all(
                isinstance(v, _SCALARS) for v in value):
            value = tuple(value)
        elif not isinstance(value, _SCALARS):
            continue
        out.append(f'{key}={value!r}')
    config = attributes.get('config')
    if hasattr(config, 'to_json_string'):  # a transformers PretrainedConfig
        out.append('config=' + config.to_json_string(use_diff=False))
    return out


def architecture_fingerprint(tower: nn.Module,
                             settings: Optional[Mapping[str, Any]] = None
                             ) -> str:
    """BLAKE2b digest (hex) of what a tower's embeddings depend on besides
    its weights: the class, ``extra_repr`` and scalar settings of every
    submodule (activation classes, heads, ...), the tower's
    :data:`TOWER_SETTINGS` (pooling, end-of-text id, context length, ...),
    Hugging Face configs, and ``settings`` (model name, tokenizer)."""
    parts = []
    for name, module in tower.named_modules():
        cls = type(module)
        # the tower's own repr may list what rows do not depend on (the
        # package's text encoder: its templates, freeze policy): its
        # TOWER_SETTINGS stand for it
        own = '' if module is tower else module.extra_repr()
        parts.append(f'{name}:{cls.__module__}.{cls.__qualname__}({own})')
        parts.extend(_settings_of(module,
                                  TOWER_SETTINGS if module is tower else None))
    for key, value in sorted((settings or {}).items()):
        parts.append(f'setting {key}={value!r}')
    return hashlib.blake2b('\n'.join(parts).encode(),
                           digest_size=20).hexdigest()


def bank_digest(weights: str, fingerprint: str) -> str:
    """The bank-file digest of a weights digest and an architecture
    fingerprint."""
    return hashlib.blake2b(f'{weights}|{fingerprint}'.encode(),
                           digest_size=20).hexdigest()


class TextEmbeddingBank:
    """Sentence -> embedding rows of one frozen text tower, on disk.

    Args:
        folder: where the bank files live (created on first write).
        digest: :func:`bank_digest` of the tower.
        dtype: the tower's compute dtype; device_type: 'cpu', 'cuda', ...
    """

    def __init__(self, folder: Path, digest: str, dtype: torch.dtype,
                 device_type: str):
        self.folder = Path(folder)
        dtype_name = str(dtype).replace('torch.', '')
        self.path = self.folder / f'{digest}-{dtype_name}-{device_type}.pt'
        self.lock_path = self.path.with_name(self.path.name + '.lock')
        self._sentences: List[str] = []
        self._rows: Dict[str, int] = {}
        self._embeddings: Optional[Tensor] = None
        self._load()

    def __len__(self) -> int:
        return len(self._sentences)

    def _read(self) -> Optional[Tuple[List[str], Tensor]]:
        """(sentences, embeddings) of the file, or None (absent or
        unreadable: a damaged file is rebuilt, not trusted)."""
        if not self.path.is_file():
            return None
        try:
            content = torch.load(self.path, map_location='cpu',
                                 weights_only=True)
            sentences = list(content['sentences'])
            embeddings = content['embeddings']
            if not isinstance(embeddings, Tensor) or \
                    embeddings.shape[0] != len(sentences):
                raise ValueError('sentences and embeddings differ in count')
        except Exception as err:
            print(f'mmseg_ovss text bank: ignoring unreadable {self.path} '
                  f'({type(err).__name__}: {err}); it will be rewritten',
                  file=sys.stderr)
            return None
        return sentences, embeddings

    def _load(self) -> None:
        content = self._read()
        if content is not None:
            self._set(*content)

    def _set(self, sentences: List[str], embeddings: Optional[Tensor]
             ) -> None:
        self._sentences = sentences
        self._rows = {s: i for i, s in enumerate(sentences)}
        self._embeddings = embeddings

    def missing(self, sentences: Sequence[str]) -> List[str]:
        """The distinct sentences not in the bank, in first-seen order."""
        seen = set()
        out = []
        for sentence in sentences:
            if sentence not in self._rows and sentence not in seen:
                seen.add(sentence)
                out.append(sentence)
        return out

    def add(self, sentences: Sequence[str], embeddings: Tensor) -> None:
        """Append rows and write the file (locked, merged, atomically)."""
        if not sentences:
            return
        embeddings = embeddings.detach().float().cpu()
        start = len(self._sentences)
        self._sentences.extend(sentences)
        self._rows.update({s: start + i for i, s in enumerate(sentences)})
        self._embeddings = embeddings if self._embeddings is None else \
            torch.cat([self._embeddings, embeddings])
        self._write()

    def _merge(self, sentences: List[str], embeddings: Tensor) -> None:
        """Put the rows on disk first, then those of this bank they lack
        (another process's rows are kept)."""
        on_disk = set(sentences)
        ours = [i for i, s in enumerate(self._sentences)
                if s not in on_disk]
        if self._embeddings is not None and ours:
            extra = self._embeddings.index_select(
                0, torch.tensor(ours, dtype=torch.long))
            embeddings = torch.cat([embeddings, extra])
        self._set(sentences + [self._sentences[i] for i in ours],
                  embeddings)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on the sidecar lock file (POSIX ``flock``)."""
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.lock_path, 'a') as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _write(self) -> None:
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._locked():
                on_disk = self._read()
                if on_disk is not None:
                    self._merge(*on_disk)
                handle, tmp = tempfile.mkstemp(dir=self.folder,
                                               suffix='.tmp')
                os.close(handle)
                torch.save(dict(sentences=self._sentences,
                                embeddings=self._embeddings), tmp)
                os.replace(tmp, self.path)
                tmp = None
        except (OSError, RuntimeError) as err:  # torch.save: RuntimeError
            print(f'mmseg_ovss text bank: cannot write {self.path} '
                  f'({type(err).__name__}: {err}); embeddings are not kept '
                  f'(free disk space, set {BANK_ENV} to a writable folder or '
                  f'{BANK_ENV}=off)', file=sys.stderr)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def lookup(self, sentences: Sequence[str]) -> Tensor:
        """(N, D) rows of sentences that are all in the bank."""
        index = torch.tensor([self._rows[s] for s in sentences],
                             dtype=torch.long)
        return self._embeddings.index_select(0, index)


def encode_with_bank(bank: TextEmbeddingBank, sentences: Sequence[str],
                     encode: Callable[[List[str]], Tensor],
                     batch_size: int, device: torch.device) -> Tensor:
    """(N, D) embeddings of ``sentences``: banked rows read back, the rest
    encoded by ``encode`` (a batch of sentences -> normalised rows) in
    batches of ``batch_size``, with a progress bar for a large first build,
    then added to the bank."""
    todo = bank.missing(sentences)
    if todo:
        chunks = []
        starts = range(0, len(todo), batch_size)
        progress = _progress(len(todo)) if \
            len(todo) >= PROGRESS_MIN_SENTENCES else None
        for start in starts:
            batch = todo[start:start + batch_size]
            chunks.append(encode(batch).float().cpu())
            if progress is not None:
                progress.update(len(batch))
        if progress is not None:
            progress.close()
        bank.add(todo, torch.cat(chunks))
    return bank.lookup(sentences).to(device)


def _progress(total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with transformers
        return None
    return tqdm(total=total, desc='text bank: encoding sentences',
                unit='sent', file=sys.stderr, leave=False)


def bank_key(module: nn.Module,
             settings: Optional[Mapping[str, Any]] = None
             ) -> Tuple[str, torch.dtype, str]:
    """(bank digest, dtype, device type) of a module: its weights and
    architecture (:func:`architecture_fingerprint` with ``settings``)."""
    first = next(module.parameters())
    digest = bank_digest(weights_digest(module),
                         architecture_fingerprint(module, settings))
    return digest, first.dtype, first.device.type
