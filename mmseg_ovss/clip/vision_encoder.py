"""Block-by-block forward of an open_clip ViT with a dense strategy.

One adapter over open_clip's ``VisionTransformer`` (never a vendored CLIP):
position embeddings are interpolated to any window, the vanilla attention of
chosen blocks is captured, the last block(s) are replaced by a dense strategy
for the patch output, and the CLS embedding of the unmodified path is read.
"""
import copy
import weakref
from typing import Iterable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmseg_ovss.clip.attention import (block_forward_with_attention,
                                       cls_block_forward, head_reduction)
from mmseg_ovss.clip.features import DenseCLIPFeatures
from mmseg_ovss.clip.strategies import DenseStrategy
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError


POS_INTERP_MODES = ('size', 'size_antialias', 'dino')

# encoder -> {key: copy of its tower in another dtype}; outside the modules,
# so copies are never saved, pickled, deep-copied or shared by replicas
_CAST_COPIES: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


def interpolate_position_embedding(pos_embed: Tensor, src_grid: Tuple[int, int],
                                   dst_grid: Tuple[int, int],
                                   mode: str = 'size') -> Tensor:
    """Bicubically resize (1 + h*w, C) position embeddings to ``dst_grid``.

    ``mode``:

    - ``'size'``: ``F.interpolate(size=dst_grid)``.
    - ``'size_antialias'``: the same with ``antialias=True`` (GEM's code).
    - ``'dino'``: DINO-style ``scale_factor=((h' + 0.1) / h, (w' + 0.1) / w)``
      as in the SCLIP, NACLIP, ClearCLIP and ProxyCLIP code; the output grid
      is still ``dst_grid`` but the sampling positions differ slightly.
    """
    if mode not in POS_INTERP_MODES:
        raise OVSSConfigError(
            f'unknown position-embedding interpolation {mode!r}; use one '
            f'of {POS_INTERP_MODES}')
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    channels = pos_embed.shape[-1]
    patch_pos = patch_pos.reshape(1, *src_grid, channels).permute(0, 3, 1, 2)
    if mode == 'dino':
        scale = tuple((dst + 0.1) / src
                      for dst, src in zip(dst_grid, src_grid))
        patch_pos = F.interpolate(patch_pos.float(), scale_factor=scale,
                                  mode='bicubic', align_corners=False)
        if tuple(patch_pos.shape[-2:]) != tuple(dst_grid):
            got = tuple(patch_pos.shape[-2:])
            raise OVSSDataError(
                f'DINO-style interpolation gave a {got} grid instead of '
                f'{tuple(dst_grid)}')
    else:
        patch_pos = F.interpolate(patch_pos.float(), size=tuple(dst_grid),
                                  mode='bicubic', align_corners=False,
                                  antialias=mode == 'size_antialias')
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(-1, channels)
    return torch.cat([cls_pos, patch_pos.to(pos_embed.dtype)], dim=0)


class DenseCLIPVisionEncoder(nn.Module):
    """Dense image encoder over ``open_clip_model.visual``.

    Args:
        visual: an open_clip ``VisionTransformer`` (token pooling, no
            attentional pooler).
        strategy: the dense strategy for the last block(s).
        pos_interp (str): how position embeddings are resized to a window's
            grid, see :func:`interpolate_position_embedding` (``'size'``,
            ``'size_antialias'`` or ``'dino'``).
        clip_model (nn.Module, optional): the open_clip model ``visual``
            belongs to; its ``logit_scale`` (log of CLIP's temperature) is
            exposed as :attr:`logit_scale` and on the features, for heads
            that scale cosines the way CLIP does (FreeCP's Eq. 1). Only
            read: the model is not registered as a submodule.
    """

    def __init__(self, visual: nn.Module, strategy: DenseStrategy,
                 pos_interp: str = 'size',
                 clip_model: Optional[nn.Module] = None):
        super().__init__()
        # kept outside the module tree (no second copy of the CLIP model in
        # the state dict); read at every forward, so loading weights or
        # moving the model to another device is seen
        self.__dict__['_clip_model'] = clip_model
        if pos_interp not in POS_INTERP_MODES:
            raise OVSSConfigError(
                f'unknown pos_interp {pos_interp!r}; use one of '
                f'{POS_INTERP_MODES}')
        self.pos_interp = pos_interp
        for attr in ('conv1', 'class_embedding', 'positional_embedding',
                     'transformer', 'ln_post'):
            if not hasattr(visual, attr):
                raise OVSSConfigError(
                    f'{type(visual).__name__} is not an open_clip ViT; dense '
                    'CLIP needs a ViT image tower (e.g. ViT-B-16)')
        if getattr(visual, 'attn_pool', None) is not None:
            raise OVSSConfigError(
                'open_clip ViTs with an attentional pooler (CoCa) are not '
                'supported by the dense strategies')
        self.visual = visual
        self.strategy = strategy
        if strategy.num_blocks > self.num_layers:
            raise OVSSConfigError(
                f'{type(strategy).__name__} replaces {strategy.num_blocks} '
                f'blocks but the ViT has only {self.num_layers}')

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def patch_size(self) -> int:
        return int(self.visual.conv1.kernel_size[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def logit_scale(self) -> Optional[Tensor]:
        """The CLIP model's temperature ``logit_scale.exp()`` as a 0-dim
        float32 tensor (100 for OpenAI CLIP), or None when not given."""
        log_scale = getattr(self.__dict__.get('_clip_model'), 'logit_scale',
                            None)
        if log_scale is None:
            return None
        return log_scale.detach().float().exp()

    def _batch_first(self) -> bool:
        return getattr(self.visual.transformer, 'batch_first', True)

    def run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        if self._batch_first():
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Patch + CLS tokens with interpolated position embeddings."""
        visual = self.visual
        x = visual.conv1(images.to(self.dtype))
        grid = (x.shape[-2], x.shape[-1])
        if grid[0] == 0 or grid[1] == 0:
            raise OVSSDataError(
                f'image of size {tuple(images.shape[-2:])} is smaller than '
                f'one {self.patch_size}-pixel patch; resize it up first')
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1)
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        src_grid = tuple(visual.grid_size)
        pos = interpolate_position_embedding(visual.positional_embedding,
                                             src_grid, grid, self.pos_interp)
        x = x + pos.to(x.dtype)
        return visual.ln_pre(x), grid

    def project(self, tokens: Tensor) -> Tensor:
        """``ln_post`` and the visual projection."""
        tokens = self.visual.ln_post(tokens)
        if self.visual.proj is not None:
            tokens = tokens @ self.visual.proj
        return tokens

    def encode_cls(self, images: Tensor,
                   dtype: Optional[torch.dtype] = None) -> Tensor:
        """(N, D) projected CLS embeddings of the unmodified CLIP path.

        The last block runs for the CLS query only (exact, see
        :func:`cls_block_forward`). ``dtype`` other than the tower's runs a
        copy of the tower cast to it (:meth:`cast_copy`), e.g. bf16 crops
        on a CPU with AMX while the dense path stays fp32.
        """
        encoder = self
        if dtype is not None and dtype != self.dtype:
            encoder = self.cast_copy(dtype, images.device)
        x, _ = encoder.embed(images)
        for block in encoder.blocks[:-1]:
            x = encoder.run_block(block, x)
        if encoder._batch_first():
            x = cls_block_forward(encoder.blocks[-1], x)
        else:
            x = encoder.run_block(encoder.blocks[-1], x)
        return encoder.project(x[:, 0]).float()

    def cast_copy(self, dtype: torch.dtype,
                  device: torch.device) -> 'DenseCLIPVisionEncoder':
        """A copy of the image tower in ``dtype`` on ``device``.

        Kept out of the module tree (no parameters, no state-dict keys) and
        rebuilt when the tower's weights change (loading a checkpoint bumps
        their versions; edits through ``.data`` do not) or another
        dtype/device is asked for. Weights are cast one by one, so the tower
        is never duplicated at its own precision.
        """
        device = torch.device(device)
        key = (dtype, device, tuple((p.data_ptr(), p._version)
                                    for p in self.visual.parameters()))
        cache = _CAST_COPIES.setdefault(self, {})
        encoder = cache.get(key)
        if encoder is None:
            memo = {}
            for tensor in (*self.visual.parameters(), *self.visual.buffers()):
                cast = tensor.detach().to(
                    device, dtype if tensor.is_floating_point() else None)
                memo[id(tensor)] = nn.Parameter(cast, requires_grad=False) \
                    if isinstance(tensor, nn.Parameter) else cast
            encoder = DenseCLIPVisionEncoder(
                copy.deepcopy(self.visual, memo), self.strategy,
                self.pos_interp)
            cache.clear()
            cache[key] = encoder
        return encoder

    def _head_reduction(self, attention_heads: Union[None, str, int]):
        """The map applied to captured (B, heads, N, N) attention."""
        return head_reduction(attention_heads, self.blocks[0].attn.num_heads)

    def output_patch_size(self, images: Tensor, grid: Tuple[int, int],
                          out_grid: Tuple[int, int]) -> int:
        """Pixels per output token: CLIP's patch, or the pixel pitch of
        another output grid (ProxyCLIP: DINO's 8-pixel patches)."""
        if tuple(out_grid) == tuple(grid):
            return self.patch_size
        return images.shape[-1] // out_grid[1]

    def forward(self, images: Tensor, attention_layers: Iterable[int] = (),
                with_cls: bool = False,
                attention_heads: Union[None, str, int] = None
                ) -> DenseCLIPFeatures:
        """Dense features of (B, 3, H, W) normalised windows.

        H and W must be multiples of the patch size (the segmentor pads).
        ``attention_layers`` are 0-based block indices whose vanilla
        attention is returned; ``attention_heads`` keeps every head (None),
        only their mean (``'mean'``) or one head (an int), see
        :class:`DenseCLIPFeatures`. ``features.logit_scale`` is
        :attr:`logit_scale`.
        """
        reduce_heads = self._head_reduction(attention_heads)
        num_layers, num_dense = self.num_layers, self.strategy.num_blocks
        attention_layers = set(int(i) % num_layers for i in attention_layers)
        first_dense = num_layers - num_dense
        # The dense strategy needs the inputs of the last ``num_dense``
        # blocks, so the stream runs up to the second-to-last block; the
        # last block runs only for the CLS token or its attention.
        last_run = num_layers - 2
        if with_cls or (num_layers - 1) in attention_layers:
            last_run = num_layers - 1
        x, grid = self.embed(images)
        dense_inputs: List[Tensor] = []
        attn_weights = {}
        for index, block in enumerate(self.blocks):
            if index >= first_dense:
                dense_inputs.append(x)
            if index > last_run:
                break
            if index in attention_layers:
                x, weights = block_forward_with_attention(
                    block, x, reduce_heads)
                attn_weights[index] = weights.float()
            else:
                x = self.run_block(block, x)
        tokens, out_grid = self.strategy(self.blocks[first_dense:],
                                         dense_inputs, grid, images)
        patches = self.project(tokens[:, 1:]).float()
        patches = patches.transpose(1, 2).reshape(
            patches.shape[0], -1, *out_grid)
        cls_token = self.project(x[:, 0]).float() if with_cls else None
        features = DenseCLIPFeatures(
            patch_tokens=patches,
            images=images,
            patch_size=self.output_patch_size(images, grid, out_grid),
            cls_token=cls_token,
            attn_weights=attn_weights,
            encode_image=self.encode_cls,
            attn_heads=attention_heads)
        # CLIP's temperature (None when unknown), for FreeCP's Eq. 1
        features.logit_scale = self.logit_scale
        return features
