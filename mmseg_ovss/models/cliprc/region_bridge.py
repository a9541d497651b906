"""CLIP-RC's Region-Level Bridge (RLB): region tokens and their attention mask.

Zhang et al., "Exploring Regional Clues in CLIP for Zero-Shot Semantic
Segmentation" (CVPR 2024), Sec. 3.2, Eqs. 1-3 and Fig. 5. M tokens, one per
cell of a sqrt(M) x sqrt(M) grid over the patch grid, are appended after the
patches (Eq. 1: ``X^0 = [G^0, P^0, I^0, R^0]``) and read their region out
through an additive attention mask that every block adds to
``q k^T / sqrt(d)`` (Eq. 2). Each token starts as CLIP's CLS token: class
embedding plus the CLS position embedding (``Jittor/JSeg``
``python/jseg/models/backbones/clip_encoder_rlb.py``, ``init_weights``), and
is not updated (paper Sec. 3.2; Table 6 has an "update" row).

The mask (Fig. 5; ``gen_attention_mask`` in the same file of JSeg):

* CLS, prompts and patches attend to each other, never to an RLB token
  except as below;
* RLB token m attends to the patches of its region and to itself only;
* with ``patches_see_region=True`` (the authors' code, default) the patches
  of region m also attend to token m; with False the tokens are a pure
  read-out and leave CLS, prompts and patches exactly as without them.
"""
import math
from functools import partial
from typing import Dict, Tuple

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.clip.tokens import TokenLayout, additive_mask
from mmseg_ovss.utils.errors import OVSSConfigError

#: masks kept per bridge (one per layout, device and dtype: slide inference
#: needs one; whole-image inference on many sizes would otherwise grow)
MASK_CACHE_SIZE = 8


def region_side(num_tokens) -> int:
    """sqrt(M) for a square number of region tokens M (1, 4, 16, ...)."""
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or \
            num_tokens < 1 or math.isqrt(num_tokens) ** 2 != num_tokens:
        raise OVSSConfigError(
            f'RegionLevelBridge num_tokens={num_tokens!r} must be a square '
            'number (1, 4, 16, 64, 256, ...): the tokens sit on a '
            'sqrt(M) x sqrt(M) grid of regions')
    return math.isqrt(num_tokens)


def patch_regions(grid: Tuple[int, int], side: int) -> Tensor:
    """(h*w,) region index of every patch (raster order) for a ``side`` x
    ``side`` grid of equal regions; regions are numbered row-major, as the
    RLB tokens are.

    Raises:
        OVSSConfigError: ``side`` does not divide both sides of the grid.
    """
    h, w = grid
    if h % side or w % side:
        raise OVSSConfigError(
            f'RegionLevelBridge with {side * side} tokens ({side}x{side} '
            f'regions) needs a patch grid divisible by {side}, got {h}x{w} '
            'patches; use crops whose side is a multiple of '
            f'{side} patches (test_cfg mode="slide" with such a crop_size) '
            'or another num_tokens')
    rows = torch.arange(h) // (h // side)
    cols = torch.arange(w) // (w // side)
    return (rows[:, None] * side + cols[None, :]).reshape(-1)


def region_attention_allowed(layout: TokenLayout, side: int,
                             patches_see_region: bool = True) -> Tensor:
    """(N, N) bool: query row may attend to key column (Fig. 5).

    ``layout.num_suffix`` must be the ``side**2`` region tokens.
    """
    num_regions = side * side
    if layout.num_suffix != num_regions:
        raise OVSSConfigError(
            f'the region-level-bridge mask is for {num_regions} suffix '
            f'tokens but the layout {layout} has {layout.num_suffix}')
    n = layout.num_tokens
    image_end = layout.suffix.start
    patches, suffix = layout.patches, layout.suffix
    member = patch_regions(layout.grid, side)[None, :] == \
        torch.arange(num_regions)[:, None]          # (M, h*w)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:image_end, :image_end] = True
    allowed[suffix, patches] = member
    allowed[suffix, suffix] = torch.eye(num_regions, dtype=torch.bool)
    if patches_see_region:
        allowed[patches, suffix] = member.t()
    return allowed


@MODELS.register_module()
class RegionLevelBridge(BaseModule):
    """M region tokens and the attention mask that ties each to its region.

    Args:
        num_tokens (int): M, a square number (16 in CLIP-RC: 4x4 regions of
            8x8 patches at 512 px; Table 6 tries 1 to 1024). sqrt(M) must
            divide the patch grid of every image the backbone sees.
        update (bool): train the tokens (a Parameter; Table 6 row 1) or keep
            them fixed at their CLS initialisation (a buffer, saved with the
            model; the paper's default).
        patches_see_region (bool): the patches of region m also attend to
            token m (True: the authors' code, ``gen_attention_mask``) or the
            tokens only read their region out (False).
        embed_dims (int): token width (the segmentor fills in the
            backbone's).
    """

    def __init__(self,
                 num_tokens: int = 16,
                 update: bool = False,
                 patches_see_region: bool = True,
                 embed_dims: int = 768,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.side = region_side(num_tokens)
        self.num_tokens = num_tokens
        for name, value in (('update', update),
                            ('patches_see_region', patches_see_region)):
            if not isinstance(value, bool):
                raise OVSSConfigError(
                    f'RegionLevelBridge {name} must be True or False, got '
                    f'{value!r}')
        self.update = update
        self.patches_see_region = patches_see_region
        self.embed_dims = int(embed_dims)
        initial = torch.zeros(num_tokens, self.embed_dims)
        if update:
            self.tokens = nn.Parameter(initial)
        else:
            self.register_buffer('tokens', initial)
        self._masks: Dict[tuple, Tensor] = {}

    @property
    def grid(self) -> Tuple[int, int]:
        """The region grid (sqrt(M), sqrt(M))."""
        return (self.side, self.side)

    @torch.no_grad()
    def init_from_cls(self, class_embedding: Tensor,
                      cls_position: Tensor) -> None:
        """R^0 = class embedding + CLS position embedding, for every token
        (JSeg ``init_weights``)."""
        token = (class_embedding + cls_position).reshape(-1)
        if token.numel() != self.embed_dims:
            raise OVSSConfigError(
                f'RegionLevelBridge of width {self.embed_dims} cannot start '
                f'from a CLS token of width {token.numel()}; build it with '
                "the backbone's embed_dims")
        self.tokens.copy_(token.to(self.tokens).expand_as(self.tokens))

    def suffix_tokens(self) -> Tensor:
        """(1, M, width) tokens to append after the patches."""
        return self.tokens.unsqueeze(0)

    def attention_mask(self, layout: TokenLayout,
                       device: torch.device = torch.device('cpu'),
                       dtype: torch.dtype = torch.float32) -> Tensor:
        """(1, 1, N, N) additive mask of ``layout`` (0 allowed, -inf
        blocked), built once per layout, device and dtype."""
        key = (layout, torch.device(device), dtype)
        mask = self._masks.get(key)
        if mask is None:
            allowed = region_attention_allowed(layout, self.side,
                                               self.patches_see_region)
            mask = additive_mask(allowed.to(device), dtype)[None, None]
            if len(self._masks) >= MASK_CACHE_SIZE:
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = mask
        return mask

    def mask_fn(self, device: torch.device, dtype: torch.dtype):
        """The mask as the backbone takes it: a callable ``layout -> mask``
        (each block's layout, after the prompts are inserted)."""
        return partial(self.attention_mask, device=device, dtype=dtype)

    def __getstate__(self):
        state = self.__dict__.copy()
        state['_masks'] = {}
        return state

    def extra_repr(self) -> str:
        return (f'num_tokens={self.num_tokens}, update={self.update}, '
                f'patches_see_region={self.patches_see_region}')
