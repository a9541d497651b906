"""The token sequence of the CLIP image tower and its attention masks.

Every block of :class:`~mmseg_ovss.models.backbones.OpenCLIPViT` sees tokens
in the order ``[CLS, prefix..., patches..., suffix...]``: the CLS token,
tokens inserted between CLS and the patches (visual prompts, as in VPT and
ZegCLIP), the ``h * w`` patch tokens in raster order, and tokens appended
after them (CLIP-RC's region-level bridge). :class:`TokenLayout` says where
each part lives; :class:`CLIPViTTokens` holds what a forward returns.

An attention mask is either

* additive float, any shape broadcastable to ``(B, heads, N, N)``
  (``N = layout.num_tokens``, query rows, key columns); ``-inf`` (or a large
  negative value) blocks a pair. CLIP-RC's Eq. 2 adds such a mask to
  ``q k^T / sqrt(d)`` in every block;
* bool with the meaning of :func:`torch.nn.functional.
  scaled_dot_product_attention` (``True``: the query may attend to the key);
* a callable ``layout -> mask``, called for every block with the layout
  that block sees (for hooks that change the token count).
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from mmseg_ovss.utils.errors import OVSSConfigError

AttentionMask = Union[None, Tensor, Callable[['TokenLayout'], Tensor]]


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OVSSConfigError(
            f'TokenLayout {name}={value!r} must be an int >= 0')
    return value


@dataclass(frozen=True)
class TokenLayout:
    """Where CLS, prefix, patch and suffix tokens sit in a sequence.

    Attributes:
        num_prefix: tokens between CLS and the patches (visual prompts).
        grid: the patch grid ``(h, w)``.
        num_suffix: tokens after the patches (e.g. region tokens).
    """
    num_prefix: int
    grid: Tuple[int, int]
    num_suffix: int = 0

    def __post_init__(self):
        _count('num_prefix', self.num_prefix)
        _count('num_suffix', self.num_suffix)
        grid = tuple(self.grid)
        if len(grid) != 2 or any(
                isinstance(g, bool) or not isinstance(g, int) or g < 1
                for g in grid):
            raise OVSSConfigError(
                f'TokenLayout grid={self.grid!r} must be two ints >= 1 '
                '(patch rows, patch columns)')
        object.__setattr__(self, 'grid', grid)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return 1 + self.num_prefix + self.num_patches + self.num_suffix

    @property
    def cls(self) -> slice:
        return slice(0, 1)

    @property
    def prefix(self) -> slice:
        return slice(1, 1 + self.num_prefix)

    @property
    def patches(self) -> slice:
        start = 1 + self.num_prefix
        return slice(start, start + self.num_patches)

    @property
    def suffix(self) -> slice:
        start = 1 + self.num_prefix + self.num_patches
        return slice(start, start + self.num_suffix)

    def with_prefix(self, n: int) -> 'TokenLayout':
        """The same layout with ``n`` prefix tokens (not ``n`` more)."""
        return dataclasses.replace(self, num_prefix=n)

    def with_suffix(self, n: int) -> 'TokenLayout':
        """The same layout with ``n`` suffix tokens (not ``n`` more)."""
        return dataclasses.replace(self, num_suffix=n)


def check_tokens(x: Tensor, layout: TokenLayout, what: str) -> None:
    """Raise when (B, N, C) tokens ``x`` do not have ``layout``'s N."""
    if x.dim() != 3 or x.shape[1] != layout.num_tokens:
        raise OVSSConfigError(
            f'{what}: tokens of shape {tuple(x.shape)} do not fit the layout '
            f'{layout} (expected (B, {layout.num_tokens}, C): 1 CLS + '
            f'{layout.num_prefix} prefix + {layout.num_patches} patches + '
            f'{layout.num_suffix} suffix); a hook that inserts or removes '
            'tokens must return (tokens, new_layout)')


def resolve_attention_mask(mask: AttentionMask, layout: TokenLayout,
                           batch: int, heads: int,
                           dtype: torch.dtype) -> Optional[Tensor]:
    """The mask one block uses: ``mask(layout)`` for a callable, checked
    against ``(batch, heads, N, N)``; a float mask is cast to ``dtype``
    (the tokens' dtype, as SDPA and open_clip's block want it), a bool
    mask is kept."""
    if mask is None:
        return None
    if callable(mask) and not isinstance(mask, Tensor):
        mask = mask(layout)
        if mask is None:
            return None
    if not isinstance(mask, Tensor):
        raise OVSSConfigError(
            f'attn_mask must be a Tensor, a callable layout -> Tensor or '
            f'None, got {type(mask).__name__}')
    n = layout.num_tokens
    expected = (batch, heads, n, n)
    fits = mask.dim() <= 4
    if fits:
        try:
            fits = torch.broadcast_shapes(mask.shape, expected) == expected
        except RuntimeError:
            fits = False
    if not fits:
        raise OVSSConfigError(
            f'attn_mask of shape {tuple(mask.shape)} does not broadcast to '
            f'(B, heads, N, N) = {expected} for the layout {layout}; build '
            f'it for N = {n} tokens (1 CLS + {layout.num_prefix} prefix + '
            f'{layout.num_patches} patches + {layout.num_suffix} suffix), '
            'or pass a callable layout -> mask')
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise OVSSConfigError(
            f'attn_mask of dtype {mask.dtype} is neither additive float nor '
            'bool (True = may attend); convert it, e.g. mask.bool()')
    return mask.to(dtype)


def additive_mask(allowed: Tensor, dtype: torch.dtype = torch.float32
                  ) -> Tensor:
    """A bool ``allowed`` mask (True = may attend) as an additive one:
    0 where allowed, ``-inf`` where blocked."""
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return out.masked_fill_(~allowed.bool(), float('-inf'))


@dataclass
class CLIPViTTokens:
    """What :meth:`OpenCLIPViT.forward_tokens` returns.

    Attributes:
        layers: 0-based block index -> (B, N, width) tokens after that block
            (the blocks asked for).
        layout: the layout of the last block's output.
        layouts: block index -> the layout of that block's output.
        attn_weights: block index -> (B, heads or 1, N, N) softmax weights
            of that block (the blocks asked for).
    """
    layers: Dict[int, Tensor]
    layout: TokenLayout
    layouts: Dict[int, TokenLayout] = field(default_factory=dict)
    attn_weights: Dict[int, Tensor] = field(default_factory=dict)

    def _layer(self, index: Optional[int]) -> Tuple[Tensor, TokenLayout]:
        if index is None:
            if not self.layers:
                raise OVSSConfigError('no block output was recorded; ask '
                                      'for some with out_indices')
            index = max(self.layers)
        if index not in self.layers:
            raise OVSSConfigError(
                f'block {index} was not recorded; recorded blocks: '
                f'{sorted(self.layers)} (ask for it with out_indices)')
        return self.layers[index], self.layouts.get(index, self.layout)

    def cls(self, index: Optional[int] = None) -> Tensor:
        """(B, width) CLS token after block ``index`` (None: the deepest
        recorded)."""
        x, _ = self._layer(index)
        return x[:, 0]

    def prefix(self, index: Optional[int] = None) -> Tensor:
        x, layout = self._layer(index)
        return x[:, layout.prefix]

    def patches(self, index: Optional[int] = None) -> Tensor:
        """(B, h*w, width) patch tokens in raster order."""
        x, layout = self._layer(index)
        return x[:, layout.patches]

    def patch_map(self, index: Optional[int] = None) -> Tensor:
        """(B, width, h, w) patch tokens as a feature map."""
        x, layout = self._layer(index)
        patches = x[:, layout.patches]
        return patches.transpose(1, 2).reshape(x.shape[0], -1, *layout.grid)

    def suffix(self, index: Optional[int] = None) -> Tensor:
        x, layout = self._layer(index)
        return x[:, layout.suffix]
