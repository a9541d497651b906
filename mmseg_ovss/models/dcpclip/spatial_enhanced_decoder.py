"""Spatial Enhanced Decoder (DCP-CLIP, Sec. III-C, Fig. 5, Eqs. 13-16).

Each decoder level refines the per-class cost feature with spatial-enhance
layers (Swin W-MSA + SW-MSA blocks whose q/k take the concatenation of the
cost feature, the shallow encoder features and CLIP's attention weights,
Eqs. 13-14; :class:`~mmseg_ovss.models.blocks.guided_swin.GuidedSwinBlock`
with Swin's relative position bias and masked padding) and then upsamples it
with a U-Net-like layer (Eqs. 15-16):

    F_{l+1} = Conv([ConvT_2x(F_l) ; Up(C_init) ; Up(F_enc) (x) 1_{C'}])

(transposed convolution, bilinear upsampling of the initial cost map and of
the encoder features, which are repeated over the selected classes). A
3 x 3 convolution gives one logit per class at the last level.

Reconstructions and defaults (the paper's equation bodies are missing):

- ``num_layers`` counts the upsampling layers, 2 by default (Table VI(b)):
  24 -> 48 -> 96 for a 24 x 24 feature. The spatial-enhance stage runs at
  every level before its upsampling layer (24 and 48 with two layers; the
  base level alone with zero layers).
- Widths follow CAT-Seg's decoder (cost feature 128, decoder (64, 32)).
- ``encoder_features`` are one map per level at the feature resolution,
  prepared as CAT-Seg prepares its guidance (``cat_seg/cat_seg_model.py``
  ``upsample1``/``upsample2``, ``model.py`` ``guidance_projection`` and
  ``decoder_guidance_projection``): level l > 0 is upsampled 2**l times by a
  transposed convolution to ``encoder_upsample_channels[l]`` (256, 128),
  every level is then projected by a 3 x 3 conv + ReLU to
  ``encoder_dims[l]`` (128, 32, 16). The DCP-CLIP head gives the dense CLIP
  features for level 0 (CAT-Seg's appearance guidance) and the intermediate
  CLIP layers (CAT-Seg's decoder guidance) for the others. Level l's map
  feeds the spatial-enhance q/k at level l and the skip of the upsampling
  layer that produces level l. ``encoder_upsample_channels[l] = 0`` takes
  a map as given, bilinearly resized to its level.
- ``attention`` (the "attention weights" of Eq. 13) are a few maps at the
  feature resolution (e.g. CLIP's head-averaged [CLS]-to-patch attention of
  some layers), bilinearly upsampled to later levels.
- ``C_init`` is the initial cost volume (P template channels,
  ``cost_skip='templates'``, default) or its template mean (``'mean'``).
- Switches (Table VI): ``swin`` (a), ``num_layers`` (b), ``fuse_encoder``,
  ``fuse_cost``, ``fuse_attention`` (c; the row labels are stripped, the
  prose names shallow encoder features, the similarity-aware initial cost
  map and the attention weights, added in that order).
"""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from mmseg.registry import MODELS
from mmseg_ovss.models.blocks.guided_swin import GuidedSwinBlock
from mmseg_ovss.utils.errors import OVSSConfigError

COST_SKIPS = ('templates', 'mean')


def _fold(x: Tensor) -> Tensor:
    """(B, K, C, H, W) -> (B*K, C, H, W)."""
    return x.flatten(0, 1)


def _repeat_classes(x: Tensor, classes: int) -> Tensor:
    """(B, C, H, W) -> (B*K, C, H, W): the same map for every class."""
    return x.unsqueeze(1).expand(-1, classes, -1, -1, -1).flatten(0, 1)


class DoubleConv(nn.Sequential):
    """(3 x 3 conv, GroupNorm, ReLU) x 2, as CAT-Seg's decoder layers."""

    def __init__(self, in_channels: int, out_channels: int):
        groups = max(out_channels // 16, 1)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels), nn.ReLU(inplace=True))


class SpatialEnhanceStage(nn.Module):
    """Spatial-enhance layers of one level (Eqs. 13-14): ``depth`` guided
    Swin blocks, alternating W-MSA and SW-MSA, as Swin's (relative position
    bias; maps padded to whole windows, the padding masked out)."""

    def __init__(self, embed_dims: int, guidance_dims: int, num_heads: int,
                 window_size: int, depth: int = 2, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.guidance_norm = nn.LayerNorm(guidance_dims) \
            if guidance_dims else None
        self.blocks = nn.ModuleList(
            GuidedSwinBlock(embed_dims, guidance_dims, num_heads,
                            int(embed_dims * mlp_ratio), window_size,
                            shift=bool(i % 2), drop_path_rate=drop_path_rate,
                            position_bias=True, clamp_window=False,
                            mask_padding=True)
            for i in range(depth))

    def forward(self, x: Tensor, guidance: Optional[Tensor]) -> Tensor:
        """x (B*K, C, H, W) (classes folded image-major), guidance (B, G,
        H, W) shared by each image's classes, or None -> (B*K, C, H, W)."""
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        if guidance is not None:
            guidance = self.guidance_norm(guidance.flatten(2).transpose(1, 2))
        for block in self.blocks:
            tokens = block(tokens, (height, width), guidance)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


@MODELS.register_module()
class SpatialEnhancedDecoder(BaseModule):
    """DCP-CLIP's decoder (see the module doc).

    Args:
        in_channels (int): width d of the cost feature (128).
        cost_channels (int): templates P of the initial cost volume (80).
        encoder_channels (sequence[int]): widths of the encoder features of
            levels 0..num_layers as the head gives them (D, then the CLIP
            width).
        encoder_upsample_channels (sequence[int]): transposed-conv widths
            of levels 1..num_layers (entry 0 is unused; 0: no transposed
            conv).
        encoder_dims (sequence[int]): their widths after projection
            (CAT-Seg's guidance widths: 128 for the feature level, then 32,
            16).
        attention_channels (int): number of attention-weight maps (2: the
            [CLS] attention of two CLIP layers; the DCP-CLIP head sets it).
        decoder_channels (sequence[int]): widths of the upsampled levels
            (CAT-Seg: 64, 32).
        num_layers (int): upsampling layers, 0, 1 or 2 (Table VI(b)).
        swin (bool): the spatial-enhance layers (Table VI(a)).
        fuse_encoder, fuse_cost, fuse_attention (bool): Table VI(c).
        cost_skip (str): 'templates' (default) or 'mean'.
        window_size (int): Swin window (12).
        num_heads (int): Swin heads (4).
        depth (int): Swin blocks per level (2: W-MSA then SW-MSA).
        mlp_ratio (float): Swin FFN ratio (4).
    """

    def __init__(self,
                 in_channels: int = 128,
                 cost_channels: int = 80,
                 encoder_channels: Sequence[int] = (512, 768, 768),
                 encoder_upsample_channels: Sequence[int] = (0, 256, 128),
                 encoder_dims: Sequence[int] = (128, 32, 16),
                 attention_channels: int = 2,
                 decoder_channels: Sequence[int] = (64, 32),
                 num_layers: int = 2,
                 swin: bool = True,
                 fuse_encoder: bool = True,
                 fuse_cost: bool = True,
                 fuse_attention: bool = True,
                 cost_skip: str = 'templates',
                 window_size: int = 12,
                 num_heads: int = 4,
                 depth: int = 2,
                 mlp_ratio: float = 4.0,
                 init_cfg=None):
        super().__init__(init_cfg)
        if num_layers not in (0, 1, 2, 3):
            raise OVSSConfigError(
                f'SpatialEnhancedDecoder num_layers={num_layers!r}: use 0, '
                '1 or 2 (Table VI(b); 3 is allowed for larger inputs)')
        if cost_skip not in COST_SKIPS:
            raise OVSSConfigError(
                f'SpatialEnhancedDecoder cost_skip={cost_skip!r} is not one '
                f'of {COST_SKIPS}')
        levels = num_layers + 1
        for name, values, need in (('encoder_channels', encoder_channels,
                                    levels),
                                   ('encoder_upsample_channels',
                                    encoder_upsample_channels, levels),
                                   ('encoder_dims', encoder_dims, levels),
                                   ('decoder_channels', decoder_channels,
                                    num_layers)):
            if fuse_encoder or name == 'decoder_channels':
                if len(values) < need:
                    raise OVSSConfigError(
                        f'SpatialEnhancedDecoder {name}={tuple(values)} '
                        f'has {len(values)} entries; num_layers='
                        f'{num_layers} needs {need}')
        if fuse_attention and swin and attention_channels < 1:
            raise OVSSConfigError(
                'SpatialEnhancedDecoder fuse_attention=True needs '
                f'attention_channels >= 1 (got {attention_channels}): give '
                'the number of attention maps, or set fuse_attention=False')
        self.num_layers = num_layers
        self.swin = swin
        self.fuse_encoder = fuse_encoder
        self.fuse_cost = fuse_cost
        # the attention weights enter the spatial-enhance q/k only
        self.fuse_attention = fuse_attention and swin
        self.cost_skip = cost_skip
        widths = [in_channels, *decoder_channels[:num_layers]]
        self.widths = widths
        # level 0's encoder map feeds only its spatial enhancement
        enc_dims = [encoder_dims[i] if fuse_encoder and (i or swin) else 0
                    for i in range(levels)]
        self.encoder_used = [bool(d) for d in enc_dims]
        att = attention_channels if self.fuse_attention else 0
        self.encoder_up = nn.ModuleList() if fuse_encoder else None
        self.encoder_proj = nn.ModuleList() if fuse_encoder else None
        for i in range(levels if fuse_encoder else 0):
            if not enc_dims[i]:
                self.encoder_up.append(nn.Identity())
                self.encoder_proj.append(nn.Identity())
                continue
            width = encoder_channels[i]
            up = encoder_upsample_channels[i] if i else 0
            self.encoder_up.append(nn.ConvTranspose2d(
                width, up, 2 ** i, stride=2 ** i) if up else nn.Identity())
            self.encoder_proj.append(nn.Sequential(
                nn.Conv2d(up or width, enc_dims[i], 3, padding=1),
                nn.ReLU(inplace=True)))
        enhanced = range(max(num_layers, 1)) if swin else range(0)
        self.enhance = nn.ModuleDict({
            str(level): SpatialEnhanceStage(
                widths[level], enc_dims[level] + att, num_heads,
                window_size, depth, mlp_ratio)
            for level in enhanced})
        skip_cost = (cost_channels if cost_skip == 'templates' else 1) \
            if fuse_cost else 0
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(widths[i], widths[i + 1], 2, stride=2)
            for i in range(num_layers))
        self.fuse = nn.ModuleList(
            DoubleConv(widths[i + 1] + skip_cost + enc_dims[i + 1],
                       widths[i + 1]) for i in range(num_layers))
        self.head = nn.Conv2d(widths[-1], 1, 3, padding=1)

    @property
    def output_stride(self) -> int:
        """Output resolution / feature resolution (2 ** num_layers)."""
        return 2 ** self.num_layers

    def project_encoder(self, encoder_features: Sequence[Tensor]
                        ) -> List[Optional[Tensor]]:
        """Per-level upsampled and projected encoder features."""
        if not self.fuse_encoder:
            return [None] * (self.num_layers + 1)
        if len(encoder_features) < self.num_layers + 1:
            raise OVSSConfigError(
                f'SpatialEnhancedDecoder got {len(encoder_features)} '
                f'encoder feature maps; num_layers={self.num_layers} needs '
                f'{self.num_layers + 1} (one per level)')
        for level, (proj, up, feat) in enumerate(zip(
                self.encoder_proj, self.encoder_up, encoder_features)):
            if not self.encoder_used[level]:
                continue
            expected = up.in_channels if isinstance(
                up, nn.ConvTranspose2d) else proj[0].in_channels
            if feat.shape[1] != expected:
                raise OVSSConfigError(
                    f'SpatialEnhancedDecoder level {level} encoder features '
                    f'have {feat.shape[1]} channels but encoder_channels['
                    f'{level}] is {expected}: set encoder_channels to (D, '
                    'CLIP width, CLIP width), e.g. (512, 768, 768) for '
                    'ViT-B/16 and (768, 1024, 1024) for ViT-L/14')
        return [proj(up(feat)) if used else None
                for up, proj, feat, used in zip(
                    self.encoder_up, self.encoder_proj, encoder_features,
                    self.encoder_used)]

    def forward(self, cost_feature: Tensor, cost_volume: Tensor,
                encoder_features: Sequence[Tensor] = (),
                attention: Optional[Tensor] = None,
                stages: Optional[list] = None,
                class_chunk_size: Optional[int] = None) -> Tensor:
        """Decode per-class logits.

        Args:
            cost_feature: (B, K, d, h, w) refined cost feature.
            cost_volume: (B, K, P, h, w) initial cost volume C_init.
            encoder_features: one (B, c_l, h, w) map per level (or at the
                level's size where its transposed conv is off).
            attention: (B, a, h, w) attention-weight maps, or None.
            stages: a list that receives each level's (B, K, C, H, W)
                feature (for inspection and tests).
            class_chunk_size (int, optional): decode this many classes at a
                time (classes are independent here: the same numbers, less
                memory).

        Returns:
            (B, K, h * 2**L, w * 2**L) logits.
        """
        encoder = self.project_encoder(encoder_features)
        if self.cost_skip == 'mean':
            cost_volume = cost_volume.mean(dim=2, keepdim=True)
        classes = cost_feature.shape[1]
        if class_chunk_size is None or classes <= class_chunk_size:
            return self._decode(cost_feature, cost_volume, encoder,
                                attention, stages)
        return torch.cat([
            self._decode(cost_feature[:, start:start + class_chunk_size],
                         cost_volume[:, start:start + class_chunk_size],
                         encoder, attention, None)
            for start in range(0, classes, class_chunk_size)], dim=1)

    def _decode(self, cost_feature: Tensor, cost_volume: Tensor,
                encoder: List[Optional[Tensor]],
                attention: Optional[Tensor],
                stages: Optional[list]) -> Tensor:
        batch, classes = cost_feature.shape[:2]
        cost_init = _fold(cost_volume)
        x = _fold(cost_feature)
        for level in range(self.num_layers + 1):
            size = x.shape[-2:]
            if str(level) in self.enhance:
                x = self.enhance[str(level)](
                    x, self._guidance(encoder[level], attention, size))
            if stages is not None:
                stages.append(x.unflatten(0, (batch, classes)))
            if level == self.num_layers:
                break
            x = self.upsample[level](x)
            parts = [x]
            if self.fuse_cost:
                parts.append(F.interpolate(cost_init, size=x.shape[-2:],
                                           mode='bilinear',
                                           align_corners=False))
            if encoder[level + 1] is not None:
                parts.append(_repeat_classes(
                    self._resized(encoder[level + 1], x.shape[-2:]),
                    classes))
            x = self.fuse[level](torch.cat(parts, dim=1))
        logits = self.head(x)
        return logits.reshape(batch, classes, *logits.shape[-2:])

    @staticmethod
    def _resized(x: Tensor, size) -> Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode='bilinear',
                             align_corners=False)

    def _guidance(self, encoder: Optional[Tensor], attention: Optional[Tensor],
                  size) -> Optional[Tensor]:
        """[F_enc ; A] at a level's size, (B, G, H, W): the guided Swin
        blocks share each image's guidance among its classes."""
        parts = []
        if encoder is not None:
            parts.append(self._resized(encoder, size))
        if self.fuse_attention:
            if attention is None:
                raise OVSSConfigError(
                    'SpatialEnhancedDecoder fuse_attention=True needs the '
                    'attention maps: have the segmentor return CLIP '
                    'attention weights, or set fuse_attention=False')
            parts.append(self._resized(attention, size))
        if not parts:
            return None
        return torch.cat(parts, dim=1)
