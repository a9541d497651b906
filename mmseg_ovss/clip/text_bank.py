"""A text-embedding bank on disk: each sentence through the text tower once.

The authors' code of SCLIP and FreeCP re-encodes every prompt at every start
(80 templates x 150 ADE classes plus the class descriptions: about 21k
sentences, minutes on a CPU). The bank keeps the L2-normalised embedding of
every sentence a frozen text tower has encoded, in one file per
(weights digest, dtype, device type), so a second start reads them back.

The key is the content of the weights, not their source: a digest of every
parameter and buffer of the tower (BLAKE2b over the raw bytes, names and
shapes), computed once per weights version. Fine-tuned, re-initialised or
cast weights get another file; embeddings computed on a GPU are not mixed
with CPU ones (their rounding differs). Entries are appended; the file is
replaced atomically, so an interrupted write leaves the previous file.

Where: ``text_bank='auto'`` uses ``$OVSS_TEXT_BANK`` or
``~/.cache/mmseg_ovss/text_bank``; ``OVSS_TEXT_BANK=off`` (or
``text_bank=None``) turns it off.
"""
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError

BANK_ENV = 'OVSS_TEXT_BANK'
DEFAULT_BANK_DIR = Path('~/.cache/mmseg_ovss/text_bank')
OFF_VALUES = ('', '0', 'off', 'none', 'false', 'no')
#: sentences to encode before a progress bar is shown
PROGRESS_MIN_SENTENCES = 2048


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
    dtype, shape and bytes), hex."""
    digest = hashlib.blake2b(digest_size=20)
    state = module.state_dict(keep_vars=False)
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


class TextEmbeddingBank:
    """Sentence -> embedding rows of one frozen text tower, on disk.

    Args:
        folder: where the bank files live (created on first write).
        digest: :func:`weights_digest` of the tower.
        dtype: the tower's compute dtype; device_type: 'cpu', 'cuda', ...
    """

    def __init__(self, folder: Path, digest: str, dtype: torch.dtype,
                 device_type: str):
        self.folder = Path(folder)
        dtype_name = str(dtype).replace('torch.', '')
        self.path = self.folder / f'{digest}-{dtype_name}-{device_type}.pt'
        self._sentences: List[str] = []
        self._rows: Dict[str, int] = {}
        self._embeddings: Optional[Tensor] = None
        self._load()

    def __len__(self) -> int:
        return len(self._sentences)

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            content = torch.load(self.path, map_location='cpu',
                                 weights_only=True)
            sentences = list(content['sentences'])
            embeddings = content['embeddings']
            if not isinstance(embeddings, Tensor) or \
                    embeddings.shape[0] != len(sentences):
                raise ValueError('sentences and embeddings differ in count')
        except Exception as err:  # a damaged file is rebuilt, not trusted
            print(f'mmseg_ovss text bank: ignoring unreadable {self.path} '
                  f'({type(err).__name__}: {err}); it will be rewritten',
                  file=sys.stderr)
            return
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
        """Append rows and write the file (atomically)."""
        if not sentences:
            return
        embeddings = embeddings.detach().float().cpu()
        start = len(self._sentences)
        self._sentences.extend(sentences)
        self._rows.update({s: start + i for i, s in enumerate(sentences)})
        self._embeddings = embeddings if self._embeddings is None else \
            torch.cat([self._embeddings, embeddings])
        self._write()

    def _write(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=self.folder, suffix='.tmp')
            os.close(handle)
            torch.save(dict(sentences=self._sentences,
                            embeddings=self._embeddings), tmp)
            os.replace(tmp, self.path)
        except OSError as err:
            print(f'mmseg_ovss text bank: cannot write {self.path} ({err}); '
                  f'embeddings are not kept (set {BANK_ENV} to a writable '
                  f'folder or {BANK_ENV}=off)', file=sys.stderr)

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


def bank_key(module: nn.Module) -> Tuple[str, torch.dtype, str]:
    """(digest, dtype, device type) of a module's weights."""
    first = next(module.parameters())
    return weights_digest(module), first.dtype, first.device.type
