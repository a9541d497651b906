"""The image tower of an open_clip CLIP as an mmseg backbone.

One module for every CLIP method of the package: the training-free
segmentors read :meth:`OpenCLIPViT.forward_dense` (a dense strategy over the
last block(s)), trainable models read :meth:`OpenCLIPViT.forward` (mmseg
backbone outputs) or :meth:`OpenCLIPViT.forward_tokens` (every token of
chosen blocks). Tokens follow :class:`~mmseg_ovss.clip.tokens.TokenLayout`
``[CLS, prefix, patches, suffix]``; an attention mask and per-block hooks
(deep visual prompts) apply to every block; drop path follows mmseg's
``VisionTransformer``; what trains is a freeze policy
(:mod:`mmseg_ovss.clip.freeze`).
"""
import copy
import inspect
import operator
import weakref
from functools import partial
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
from mmcv.cnn.bricks.drop import DropPath
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.clip.attention import (block_forward,
                                       block_forward_with_attention,
                                       cls_block_forward, head_reduction,
                                       RegionCLSReadout)
from mmseg_ovss.clip.features import DenseCLIPFeatures
from mmseg_ovss.clip.freeze import apply_freeze_policy, keep_frozen_in_eval
from mmseg_ovss.clip.loading import DEFAULT_RANDOM_INIT_SEED, build_clip_model
from mmseg_ovss.clip.strategies import build_dense_strategy
from mmseg_ovss.clip.tokens import (AttentionMask, CLIPViTTokens, TokenLayout,
                                    check_tokens, resolve_attention_mask)
from mmseg_ovss.clip.vision_encoder import (POS_INTERP_MODES,
                                            interpolate_position_embedding)
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

OUT_SPACES = ('raw', 'normed', 'projected')

# backbone -> {key: copy of its tower in another dtype}; outside the modules,
# so copies are never saved, pickled, deep-copied or shared by replicas
_CAST_COPIES: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


def block_indices(indices: Union[int, Iterable[int]], num_layers: int,
                  what: str) -> Tuple[int, ...]:
    """0-based block indices (negative ones count from the end), sorted
    and unique as mmseg's ``VisionTransformer`` returns its outputs."""
    if isinstance(indices, int) and not isinstance(indices, bool):
        indices = (indices,)
    out = set()
    for index in indices:
        try:
            if isinstance(index, bool):
                raise TypeError
            index = operator.index(index)
        except TypeError:
            index = None
        if index is None or not -num_layers <= index < num_layers:
            raise OVSSConfigError(
                f'{what} holds {index!r}, not a block of this '
                f'{num_layers}-block ViT; use 0..{num_layers - 1} or '
                f'{-num_layers}..-1')
        out.add(index % num_layers)
    return tuple(sorted(out))


def check_open_clip_vit(visual: nn.Module) -> None:
    """Raise unless ``visual`` is an open_clip ViT with token pooling and
    ``nn.MultiheadAttention`` blocks (B/16, L/14, L/14-336, ...)."""
    for attr in ('conv1', 'class_embedding', 'positional_embedding',
                 'transformer', 'ln_pre', 'ln_post'):
        if not hasattr(visual, attr):
            raise OVSSConfigError(
                f'{type(visual).__name__} is not an open_clip ViT; '
                'OpenCLIPViT needs a ViT image tower (e.g. ViT-B-16)')
    if getattr(visual, 'attn_pool', None) is not None:
        raise OVSSConfigError(
            'open_clip ViTs with an attentional pooler (CoCa) are not '
            'supported by OpenCLIPViT')
    for block in visual.transformer.resblocks:
        if not isinstance(getattr(block, 'attn', None),
                          nn.MultiheadAttention):
            raise OVSSConfigError(
                f'OpenCLIPViT needs open_clip blocks with '
                f'nn.MultiheadAttention, got '
                f'{type(getattr(block, "attn", None)).__name__}; use a '
                'standard CLIP ViT rather than a custom-attention variant')


@MODELS.register_module()
class OpenCLIPViT(BaseModule):
    """An open_clip ViT image tower as a registered mmseg backbone.

    Args:
        model_name, pretrained, checkpoint, precision, random_init, seed,
            quick_gelu, cache_dir, trusted: the weights, as
            :func:`mmseg_ovss.clip.loading.build_clip_model` takes them; only
            the image tower is kept (``self.visual``, state-dict prefix
            ``visual.``), the rest of the CLIP model is dropped.
        pos_interp (str): how position embeddings are resized to an
            image's patch grid (``'size'``, ``'size_antialias'``,
            ``'dino'``; see :func:`interpolate_position_embedding`).
        dense_strategy (str | dict): the dense strategy of
            :meth:`forward_dense` (``DENSE_STRATEGIES``).
        out_indices (int | Sequence[int]): blocks whose outputs
            :meth:`forward` returns (negative: from the end).
        out_space (str): what :meth:`forward` returns of those tokens:
            ``'raw'`` (the block output, width channels), ``'normed'``
            (``ln_post``) or ``'projected'`` (``ln_post`` and ``proj``,
            out_dims channels, CLIP's joint space).
        output_cls_token (bool): each output is ``[patch_map, cls]`` (mmseg
            ``VisionTransformer``); else the patch map alone.
        out_attention (Sequence[int]): blocks whose attention weights
            :meth:`forward_tokens` returns by default.
        drop_path_rate (float): stochastic depth (Huang et al. 2016), rates
            linear from 0 at the first block to this at the last (mmseg's
            ``VisionTransformer`` rule), on both residual branches; active
            only while the backbone trains.
        freeze (str), trainable (Sequence[str]): the freeze policy of the
            CLIP weights, see :func:`mmseg_ovss.clip.freeze.
            apply_freeze_policy`; ``trainable`` patterns name parameters of
            ``visual`` (e.g. ``'ln_post.*'``, ``'positional_embedding'``).
        prompts (dict, optional): a registered block hook built with the
            backbone's ``embed_dims`` (and ``num_layers``, ``patch_size``
            where it takes them), e.g. ``dict(type='DeepVisualPrompts',
            num_tokens=10)``; not CLIP weights, so it trains unless its own
            config says otherwise.
        visual (nn.Module, optional): an already built open_clip
            ``VisionTransformer`` used instead of loading weights (cast
            copies, code that holds a model); its weights are not copied.
    """

    def __init__(self,
                 model_name: str = 'ViT-B-16',
                 pretrained: Optional[str] = None,
                 checkpoint: Optional[str] = None,
                 precision: str = 'fp32',
                 random_init: bool = False,
                 seed: Optional[int] = DEFAULT_RANDOM_INIT_SEED,
                 pos_interp: str = 'size',
                 dense_strategy: Union[str, dict] = 'Vanilla',
                 out_indices: Union[int, Sequence[int]] = (-1,),
                 out_space: str = 'raw',
                 output_cls_token: bool = True,
                 out_attention: Sequence[int] = (),
                 drop_path_rate: float = 0.0,
                 freeze: str = 'all',
                 trainable: Sequence[str] = (),
                 prompts: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 quick_gelu: Optional[bool] = None,
                 cache_dir: Optional[str] = None,
                 trusted: bool = False,
                 visual: Optional[nn.Module] = None):
        super().__init__(init_cfg=init_cfg)
        if pos_interp not in POS_INTERP_MODES:
            raise OVSSConfigError(
                f'unknown pos_interp {pos_interp!r}; use one of '
                f'{POS_INTERP_MODES}')
        if out_space not in OUT_SPACES:
            raise OVSSConfigError(
                f'unknown out_space {out_space!r}; use one of {OUT_SPACES}')
        if not isinstance(output_cls_token, bool):
            raise OVSSConfigError(
                f'output_cls_token must be True or False, got '
                f'{output_cls_token!r}')
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise OVSSConfigError(
                f'drop_path_rate={drop_path_rate!r} must be in [0, 1) '
                '(0.1 in ZegCLIP and CLIP-RC)')
        if visual is None:
            clip_model = build_clip_model(
                model_name, pretrained=pretrained, checkpoint=checkpoint,
                precision=precision, random_init=random_init,
                quick_gelu=quick_gelu, cache_dir=cache_dir, seed=seed,
                trusted=trusted)
            visual = clip_model.visual
            del clip_model  # the text tower goes with it
        check_open_clip_vit(visual)
        self.model_name = model_name
        self.visual = visual
        self.pos_interp = pos_interp
        self.dense_strategy = build_dense_strategy(dense_strategy)
        if self.dense_strategy.num_blocks > self.num_layers:
            raise OVSSConfigError(
                f'{type(self.dense_strategy).__name__} replaces '
                f'{self.dense_strategy.num_blocks} blocks but the ViT has '
                f'only {self.num_layers}')
        self.out_indices = block_indices(out_indices, self.num_layers,
                                         'out_indices')
        self.out_attention = block_indices(out_attention, self.num_layers,
                                           'out_attention')
        self.out_space = out_space
        self.output_cls_token = output_cls_token
        self.drop_path_rate = float(drop_path_rate)
        rates = torch.linspace(0, self.drop_path_rate, self.num_layers)
        # on the backbone, not inside the (frozen, eval-mode) CLIP blocks
        self.drop_paths = nn.ModuleList(
            DropPath(float(rate)) for rate in rates)
        self.freeze = freeze
        self.trainable = (trainable,) if isinstance(trainable, str) \
            else tuple(trainable)
        apply_freeze_policy(self.visual, freeze, self.trainable)
        self.prompts = self._build_hook(prompts)
        self.train(self.training)

    # ------------------------------------------------------------ set-up
    def _build_hook(self, cfg) -> Optional[nn.Module]:
        if cfg is None or isinstance(cfg, nn.Module):
            return cfg
        cfg = dict(cfg)
        hook_cls = MODELS.get(cfg.get('type', ''))
        if hook_cls is None:
            raise OVSSConfigError(
                f'prompts={cfg!r}: {cfg.get("type")!r} is not a registered '
                "module; use e.g. dict(type='DeepVisualPrompts', "
                'num_tokens=10)')
        takes = inspect.signature(hook_cls.__init__).parameters
        cfg.setdefault('embed_dims', self.embed_dims)
        for key, value in (('num_layers', self.num_layers),
                           ('patch_size', self.patch_size)):
            if key in takes:
                cfg.setdefault(key, value)
        return MODELS.build(cfg)

    # --------------------------------------------------------- properties
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
    def embed_dims(self) -> int:
        """Token width of the tower (768 for ViT-B)."""
        return int(self.visual.conv1.out_channels)

    @property
    def out_dims(self) -> int:
        """Channels of the projected space (512 for ViT-B/16)."""
        proj = self.visual.proj
        return self.embed_dims if proj is None else int(proj.shape[1])

    @property
    def num_heads(self) -> int:
        return int(self.blocks[0].attn.num_heads)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def grid_size(self) -> Tuple[int, int]:
        """The patch grid of the pretraining resolution."""
        return tuple(self.visual.grid_size)

    def train(self, mode: bool = True) -> 'OpenCLIPViT':
        """Set the mode; submodules whose parameters are all frozen stay in
        eval (the backbone's own flag, hence drop path, follows ``mode``)."""
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self)
        return self

    # ------------------------------------------------------------ tokens
    def _extra_tokens(self, tokens: Optional[Tensor], x: Tensor,
                      name: str) -> Optional[Tensor]:
        if tokens is None:
            return None
        batch = x.shape[0]
        if not isinstance(tokens, Tensor) or tokens.dim() != 3 or \
                tokens.shape[-1] != self.embed_dims or \
                tokens.shape[0] not in (1, batch):
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) \
                else type(tokens).__name__
            raise OVSSConfigError(
                f'{name} of shape {shape} must be (B or 1, n, width) = '
                f'({batch} or 1, n, {self.embed_dims}) tokens of this ViT')
        return tokens.to(x.dtype).expand(batch, -1, -1)

    def embed(self, images: Tensor, prefix_tokens: Optional[Tensor] = None,
              suffix_tokens: Optional[Tensor] = None
              ) -> Tuple[Tensor, TokenLayout]:
        """Tokens ``[CLS, prefix, patches, suffix]`` before block 0.

        Patch embedding, CLS and position embeddings resized to the image's
        grid (``pos_interp``); prefix and suffix tokens (B or 1, n, width)
        get no position embedding; ``ln_pre`` is applied to the whole
        sequence, as CLIP-RC's code does for its region-level-bridge tokens
        (``Jittor/JSeg``, ``CLIPVisionTransformerWithRLB.execute``: concat,
        then ``ln_pre``). ZegCLIP's visual prompts are inserted after
        ``ln_pre`` instead (``ZiqinZhou66/ZegCLIP``
        ``models/backbone/img_encoder.py``): :class:`DeepVisualPrompts`
        does that as a hook before block 0.
        """
        visual = self.visual
        x = visual.conv1(images.to(self.dtype))
        # int(): under jit tracing (FLOP counting) sizes are 0-dim tensors
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        if grid[0] == 0 or grid[1] == 0:
            raise OVSSDataError(
                f'image of size {tuple(images.shape[-2:])} is smaller than '
                f'one {self.patch_size}-pixel patch; resize it up first')
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1)
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        pos = interpolate_position_embedding(visual.positional_embedding,
                                             self.grid_size, grid,
                                             self.pos_interp)
        x = x + pos.to(x.dtype)
        prefix = self._extra_tokens(prefix_tokens, x, 'prefix_tokens')
        suffix = self._extra_tokens(suffix_tokens, x, 'suffix_tokens')
        layout = TokenLayout(
            0 if prefix is None else int(prefix.shape[1]), grid,
            0 if suffix is None else int(suffix.shape[1]))
        if prefix is not None or suffix is not None:
            parts = [x[:, :1], prefix, x[:, 1:], suffix]
            x = torch.cat([p for p in parts if p is not None], dim=1)
        return visual.ln_pre(x), layout

    def run_block(self, index: int, x: Tensor, layout: TokenLayout,
                  attn_mask: AttentionMask = None, need_weights: bool = False,
                  reduce_heads=None) -> Tuple[Tensor, Optional[Tensor]]:
        """Block ``index`` on (B, N, width) tokens of ``layout``.

        The computation of open_clip's ``block(x)`` written out from the
        block's modules (:func:`~mmseg_ovss.clip.attention.block_forward`)
        with the fused ``scaled_dot_product_attention`` (open_clip's
        ``nn.MultiheadAttention`` fast path forms the (N, N) weights with
        ``bmm`` on the CPU), the mask and drop path added; with an explicit
        softmax when the weights are asked for (returned, or
        ``reduce_heads`` of them).
        """
        check_tokens(x, layout, f'block {index}')
        block = self.blocks[index]
        mask = resolve_attention_mask(attn_mask, layout, x.shape[0],
                                      self.num_heads, x.dtype)
        drop_path = self.drop_paths[index]
        if not (self.training and drop_path.drop_prob > 0):
            drop_path = None
        if need_weights:
            return block_forward_with_attention(block, x, reduce_heads, mask,
                                                drop_path)
        return block_forward(block, x, mask, drop_path), None

    def _apply_hooks(self, index: int, x: Tensor, layout: TokenLayout,
                     block_hook) -> Tuple[Tensor, TokenLayout]:
        for hook in (self.prompts, block_hook):
            if hook is None:
                continue
            result = hook(index, x, layout)
            if result is None:
                continue
            if isinstance(result, Tensor):
                what = 'replaced tokens'
            elif isinstance(result, tuple) and len(result) == 2 and \
                    isinstance(result[0], Tensor) and \
                    isinstance(result[1], TokenLayout):
                result, layout = result
                what = 'tokens and layout'
            else:
                raise OVSSConfigError(
                    f'block hook {hook!r} returned {type(result).__name__} '
                    f'before block {index}; return None, a Tensor (tokens '
                    'replaced) or (Tensor, TokenLayout)')
            check_tokens(result, layout,
                         f'the {what} a hook returned before block {index}')
            x = result
        return x, layout

    def forward_tokens(self, images: Tensor,
                       prefix_tokens: Optional[Tensor] = None,
                       suffix_tokens: Optional[Tensor] = None,
                       attn_mask: AttentionMask = None,
                       block_hook=None,
                       out_indices: Optional[Sequence[int]] = None,
                       attention_layers: Optional[Sequence[int]] = None,
                       attention_heads: Union[None, str, int] = None
                       ) -> CLIPViTTokens:
        """Every token after chosen blocks, and their attention weights.

        Blocks run up to the deepest one asked for. Before each block the
        ``prompts`` hook, then ``block_hook``, may read, replace or insert
        tokens (``hook(index, x, layout)`` -> None, Tensor or (Tensor,
        TokenLayout)); ``attn_mask`` goes to every block (a callable gets
        each block's layout). ``out_indices`` and ``attention_layers``
        default to the backbone's ``out_indices`` and ``out_attention``;
        ``attention_heads`` reduces the weights' heads (None, ``'mean'`` or
        a head index).
        """
        outs = self.out_indices if out_indices is None else block_indices(
            out_indices, self.num_layers, 'out_indices')
        weighted = self.out_attention if attention_layers is None else \
            block_indices(attention_layers, self.num_layers,
                          'attention_layers')
        reduce_heads = head_reduction(attention_heads, self.num_heads)
        deepest = max((*outs, *weighted), default=-1)
        x, layout = self.embed(images, prefix_tokens, suffix_tokens)
        layers, layouts, attn_weights = {}, {}, {}
        for index in range(deepest + 1):
            x, layout = self._apply_hooks(index, x, layout, block_hook)
            x, weights = self.run_block(index, x, layout, attn_mask,
                                        need_weights=index in weighted,
                                        reduce_heads=reduce_heads)
            if weights is not None:
                attn_weights[index] = weights
            if index in outs:
                layers[index] = x
                layouts[index] = layout
        return CLIPViTTokens(layers=layers, layout=layout, layouts=layouts,
                             attn_weights=attn_weights)

    def project(self, tokens: Tensor) -> Tensor:
        """``ln_post`` and the visual projection."""
        tokens = self.visual.ln_post(tokens)
        if self.visual.proj is not None:
            tokens = tokens @ self.visual.proj
        return tokens

    def _to_out_space(self, tokens: Tensor) -> Tensor:
        if self.out_space == 'normed':
            return self.visual.ln_post(tokens)
        if self.out_space == 'projected':
            return self.project(tokens)
        return tokens

    def forward(self, images: Tensor, prefix_tokens: Optional[Tensor] = None,
                suffix_tokens: Optional[Tensor] = None,
                attn_mask: AttentionMask = None, block_hook=None) -> tuple:
        """mmseg backbone outputs, one per ``out_indices`` entry (block
        order): ``[patch_map (B, C, h, w), cls (B, C)]``, or the patch map
        alone with ``output_cls_token=False``; C is the width (``'raw'``,
        ``'normed'``) or ``out_dims`` (``'projected'``)."""
        tokens = self.forward_tokens(images, prefix_tokens, suffix_tokens,
                                     attn_mask, block_hook,
                                     attention_layers=())
        outs = []
        for index in self.out_indices:
            layout = tokens.layouts[index]
            x = self._to_out_space(tokens.layers[index])
            patch_map = x[:, layout.patches].transpose(1, 2).reshape(
                x.shape[0], -1, *layout.grid).contiguous()
            outs.append([patch_map, x[:, 0]] if self.output_cls_token
                        else patch_map)
        return tuple(outs)

    # ------------------------------------------------ training-free path
    def output_patch_size(self, images: Tensor, grid: Tuple[int, int],
                          out_grid: Tuple[int, int]) -> int:
        """Pixels per output token: CLIP's patch, or the pixel pitch of
        another output grid (ProxyCLIP: DINO's 8-pixel patches)."""
        if tuple(out_grid) == tuple(grid):
            return self.patch_size
        return images.shape[-1] // out_grid[1]

    def forward_dense(self, images: Tensor,
                      attention_layers: Iterable[int] = (),
                      with_cls: bool = False,
                      attention_heads: Union[None, str, int] = None,
                      dtype: Optional[torch.dtype] = None
                      ) -> DenseCLIPFeatures:
        """Dense features of (B, 3, H, W) normalised windows for the
        training-free segmentors (H, W multiples of the patch size).

        ``dtype`` other than the tower's runs the whole path (blocks, dense
        strategy, captured attention, ``encode_image`` of the features) on
        a copy of the tower cast to it (:meth:`cast_copy`); every output is
        fp32 (:mod:`mmseg_ovss.clip.precision`).

        The dense strategy replaces the last block(s) for the patch output;
        ``attention_layers`` are blocks whose vanilla attention is returned
        (``attention_heads``: every head, ``'mean'`` or one index);
        ``with_cls`` adds the projected CLS of the unmodified path.
        ``features.logit_scale`` is None (the text encoder has it).
        """
        if self.prompts is not None:
            raise OVSSConfigError(
                'forward_dense runs the dense strategies on [CLS, patches] '
                'tokens, but this backbone has prompts; use forward or '
                'forward_tokens, or build it with prompts=None')
        if dtype is not None and dtype != self.dtype:
            return self.cast_copy(dtype, images.device).forward_dense(
                images, attention_layers, with_cls, attention_heads)
        reduce_heads = head_reduction(attention_heads, self.num_heads)
        num_layers, num_dense = self.num_layers, self.dense_strategy.num_blocks
        attention_layers = set(
            block_indices(tuple(attention_layers), num_layers,
                          'attention_layers'))
        first_dense = num_layers - num_dense
        # The strategy needs the inputs of the last ``num_dense`` blocks, so
        # the stream runs up to the second-to-last block; the last block
        # runs only for the CLS token or its attention.
        last_run = num_layers - 2
        if with_cls or (num_layers - 1) in attention_layers:
            last_run = num_layers - 1
        x, layout = self.embed(images)
        dense_inputs: List[Tensor] = []
        attn_weights = {}
        for index in range(num_layers):
            if index >= first_dense:
                dense_inputs.append(x)
            if index > last_run:
                break
            x, weights = self.run_block(
                index, x, layout, need_weights=index in attention_layers,
                reduce_heads=reduce_heads)
            if weights is not None:
                attn_weights[index] = weights.float()
        tokens, out_grid = self.dense_strategy(
            self.blocks[first_dense:], dense_inputs, layout.grid, images)
        patches = self.project(tokens[:, 1:]).float()
        patches = patches.transpose(1, 2).reshape(
            patches.shape[0], -1, *out_grid)
        cls_token = self.project(x[:, 0]).float() if with_cls else None
        return DenseCLIPFeatures(
            patch_tokens=patches,
            images=images,
            patch_size=self.output_patch_size(images, layout.grid, out_grid),
            cls_token=cls_token,
            attn_weights=attn_weights,
            encode_image=self.encode_cls,
            encode_regions=partial(
                self.encode_window_regions,
                RegionCLSReadout(self.blocks[-1], dense_inputs[-1]),
                layout.grid),
            attn_heads=attention_heads,
            logit_scale=None)

    def encode_cls(self, images: Tensor,
                   dtype: Optional[torch.dtype] = None) -> Tensor:
        """(N, D) projected CLS embeddings of the unmodified CLIP path (no
        prompts, hooks or drop path).

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
            x = block_forward(block, x)
        x = cls_block_forward(encoder.blocks[-1], x)
        return encoder.project(x[:, 0]).float()

    def encode_window_regions(self, readout: RegionCLSReadout,
                              grid: Tuple[int, int], window_index: Tensor,
                              boxes: Tensor) -> Tensor:
        """(R, D) projected CLS embeddings of boxes read from the windows'
        own tokens: the last block of the unmodified path run on the CLS
        token and the patch tokens that overlap each box
        (:class:`RegionCLSReadout`), instead of a new forward of
        the cropped pixels. An approximation of a crop's embedding (the
        tokens carry context from outside the box through the earlier
        blocks), in the spirit of the mask-restricted attention of
        MaskCLIP (Ding et al., ICML 2023); ``DenseCLIPFeatures.
        encode_regions`` binds ``readout`` and ``grid``.

        Args:
            readout: the last block over the windows' (B, 1 + h * w, C)
                input tokens of that block.
            grid: (h, w) the windows' patch grid.
            window_index: (R, ) the window of each box.
            boxes: (R, 4) pixel boxes ``(x0, y0, x1, y1)`` of the window
                images, exclusive ends.
        """
        tokens = readout.x
        if len(window_index) == 0:
            return tokens.new_zeros(0, self.out_dims).float()
        height, width = grid
        p = self.patch_size
        boxes = boxes.to(tokens.device)
        cols = torch.arange(width, device=tokens.device)
        rows = torch.arange(height, device=tokens.device)
        in_x = (cols * p < boxes[:, 2:3]) & ((cols + 1) * p > boxes[:, 0:1])
        in_y = (rows * p < boxes[:, 3:4]) & ((rows + 1) * p > boxes[:, 1:2])
        patches = (in_y[:, :, None] & in_x[:, None, :]).flatten(1)
        token_mask = torch.cat([patches.new_ones(len(boxes), 1), patches],
                               dim=1)
        cls = readout(window_index.to(tokens.device), token_mask)
        return self.project(cls[:, 0]).float()

    def cast_copy(self, dtype: torch.dtype,
                  device: torch.device) -> 'OpenCLIPViT':
        """A frozen, eval-mode copy of the image tower in ``dtype`` on
        ``device``, for :meth:`encode_cls` and :meth:`forward_dense` at
        another precision. The copy shares this backbone's dense strategy
        (not copied: a strategy's own network, e.g. ProxyCLIP's VFM, keeps
        its dtype); the prompts are not carried over.

        Kept out of the module tree (no parameters, no state-dict keys) and
        rebuilt when the tower's weights change (an optimiser step or
        loading a checkpoint bumps their versions; edits through ``.data``
        do not); one copy per (dtype, device). Weights are cast one by one,
        so the tower is never duplicated at its own precision.
        """
        device = torch.device(device)
        slot = (dtype, device)
        versions = tuple((p.data_ptr(), p._version)
                         for p in self.visual.parameters())
        cache = _CAST_COPIES.setdefault(self, {})
        held = cache.get(slot)
        backbone = held[1] if held is not None and held[0] == versions \
            else None
        if backbone is None or \
                backbone.dense_strategy is not self.dense_strategy:
            memo = {}
            for tensor in (*self.visual.parameters(), *self.visual.buffers()):
                cast = tensor.detach().to(
                    device, dtype if tensor.is_floating_point() else None)
                memo[id(tensor)] = nn.Parameter(cast, requires_grad=False) \
                    if isinstance(tensor, nn.Parameter) else cast
            backbone = OpenCLIPViT(
                model_name=self.model_name,
                visual=copy.deepcopy(self.visual, memo),
                pos_interp=self.pos_interp,
                dense_strategy=self.dense_strategy,
                freeze='all').eval()
            cache[slot] = (versions, backbone)
        return backbone
