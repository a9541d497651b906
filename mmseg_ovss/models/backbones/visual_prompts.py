"""Deep visual prompts (VPT-deep, Jia et al. ECCV 2022) as a block hook.

As ZegCLIP runs them over CLIP (``ZiqinZhou66/ZegCLIP``
``models/backbone/img_encoder.py``, ``VPTCLIPVisionTransformer``), and
CLIP-RC after it (``Jittor/JSeg``, ``CLIPVisionTransformerWithRLB``): before
block 0, the first prompt set is inserted right after CLS (after ``ln_pre``);
before each block ``i < depth`` the previous block's prompt outputs are
discarded and replaced by set ``i`` (CLIP-RC Eq. 3: ``[G, -, I, R]``). Every
set passes through one shared ``Linear(embed_dims, embed_dims)`` and dropout
(0.1).

Two choices differ from ZegCLIP's code: the sets are one ``(depth, K, C)``
parameter (ZegCLIP: ``prompt_embeddings`` for block 0 and
``deep_prompt_embeddings`` for the others; ``embeddings[0]`` and
``embeddings[1:]`` are those), and blocks at or after ``depth`` keep the
prompt outputs they get (ZegCLIP drops them there; with the default
``depth=None``, every block, the two agree).
"""
import math
from typing import Optional, Tuple, Union

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.clip.tokens import TokenLayout
from mmseg_ovss.utils.errors import OVSSConfigError


def _positive_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OVSSConfigError(
            f'DeepVisualPrompts {name}={value!r} must be an int >= 1'
            + (' or None' if allow_none else ''))
    return value


@MODELS.register_module()
class DeepVisualPrompts(BaseModule):
    """Learnable prompt tokens inserted before every block (VPT-deep).

    Args:
        num_tokens (int): prompts per set, K (10 for VOC, 100 for COCO in
            ZegCLIP / CLIP-RC).
        depth (int, optional): blocks that get a set, from block 0; None:
            every block (``num_layers``).
        embed_dims (int): token width (the backbone fills it).
        projection (bool): the shared ``Linear(embed_dims, embed_dims)`` on
            every set.
        dropout (float): dropout on the projected prompts (per image).
        init_std (float, optional): draw the prompts from N(0, init_std^2);
            None: VPT's uniform(-v, v), v = sqrt(6 / (3 p^2 + embed_dims))
            for patch size p (ZegCLIP ``_init_prompt``).
        num_layers (int, optional): blocks of the ViT (the backbone fills
            it); needed when ``depth`` is None.
        patch_size (int): the ViT's patch size (the backbone fills it), for
            the uniform init.
    """

    def __init__(self,
                 num_tokens: int = 10,
                 depth: Optional[int] = None,
                 embed_dims: int = 768,
                 projection: bool = True,
                 dropout: float = 0.1,
                 init_std: Optional[float] = None,
                 init_cfg: Optional[dict] = None,
                 num_layers: Optional[int] = None,
                 patch_size: int = 16):
        super().__init__(init_cfg=init_cfg)
        self.num_tokens = _positive_int('num_tokens', num_tokens)
        self.embed_dims = _positive_int('embed_dims', embed_dims)
        self.patch_size = _positive_int('patch_size', patch_size)
        num_layers = _positive_int('num_layers', num_layers, allow_none=True)
        depth = _positive_int('depth', depth, allow_none=True)
        if depth is None:
            if num_layers is None:
                raise OVSSConfigError(
                    'DeepVisualPrompts with depth=None (every block) needs '
                    'num_layers; build it from a backbone '
                    "(prompts=dict(type='DeepVisualPrompts', ...)) or set "
                    'depth')
            depth = num_layers
        if num_layers is not None and depth > num_layers:
            raise OVSSConfigError(
                f'DeepVisualPrompts depth={depth} exceeds the {num_layers} '
                'blocks of the ViT; use depth <= num_layers or None')
        if not 0.0 <= float(dropout) < 1.0:
            raise OVSSConfigError(
                f'DeepVisualPrompts dropout={dropout!r} must be in [0, 1)')
        if init_std is not None and not float(init_std) > 0:
            raise OVSSConfigError(
                f'DeepVisualPrompts init_std={init_std!r} must be > 0, or '
                "None for VPT's uniform init")
        self.depth = depth
        self.init_std = None if init_std is None else float(init_std)
        self.embeddings = nn.Parameter(
            torch.empty(depth, self.num_tokens, self.embed_dims))
        self.projection = nn.Linear(self.embed_dims, self.embed_dims) \
            if projection else nn.Identity()
        self.dropout = nn.Dropout(float(dropout))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """VPT's / ZegCLIP's init: uniform prompts (or N(0, init_std^2)),
        Kaiming-normal (fan-out) projection weight."""
        if self.init_std is None:
            bound = math.sqrt(6.0 / (3 * self.patch_size ** 2 +
                                     self.embed_dims))
            nn.init.uniform_(self.embeddings, -bound, bound)
        else:
            nn.init.normal_(self.embeddings, std=self.init_std)
        if isinstance(self.projection, nn.Linear):
            nn.init.kaiming_normal_(self.projection.weight, a=0,
                                    mode='fan_out')

    def prompt_set(self, index: int, batch: int) -> Tensor:
        """(batch, K, C) projected prompts of set ``index`` (dropout drawn
        per image, as ZegCLIP expands before its dropout)."""
        prompts = self.projection(self.embeddings[index])
        return self.dropout(prompts.unsqueeze(0).expand(batch, -1, -1))

    def forward(self, index: int, x: Tensor, layout: TokenLayout
                ) -> Union[None, Tensor, Tuple[Tensor, TokenLayout]]:
        """The hook before block ``index``: insert (block 0), replace
        (blocks < depth) or leave (later blocks) the prompts, which occupy
        the first K prefix slots."""
        if index >= self.depth:
            return None
        prompts = self.prompt_set(index, x.shape[0]).to(x.dtype)
        k = self.num_tokens
        if index == 0:
            x = torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)
            return x, layout.with_prefix(layout.num_prefix + k)
        if layout.num_prefix < k:
            raise OVSSConfigError(
                f'DeepVisualPrompts before block {index}: the layout has '
                f'{layout.num_prefix} prefix tokens, fewer than its {k} '
                'prompts; were they removed by another hook?')
        return torch.cat([x[:, :1], prompts, x[:, 1 + k:]], dim=1)

    def extra_repr(self) -> str:
        return (f'num_tokens={self.num_tokens}, depth={self.depth}, '
                f'embed_dims={self.embed_dims}')
