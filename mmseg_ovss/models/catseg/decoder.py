"""The upsampling decoder with CLIP-layer guidance (CAT-Seg Sec. 3.4;
``KU-CVLAB/CAT-Seg`` ``cat_seg/modeling/transformer/model.py``, ``Up``,
``Aggregator.conv_decoder``, ``decoder_guidance_projection``, and
``cat_seg/cat_seg_model.py``, ``upsample1``/``upsample2``).

Two intermediate CLIP blocks (0-based 3 and 7 of ViT-B/16, 7 and 15 of
ViT-L/14) give guidance maps: their patch tokens are upsampled by
transposed convolutions (x2 to 256 channels, x4 to 128) and projected (3x3
conv + ReLU to 32 and 16). Each decoder stage upsamples every class's
aggregated cost feature by a transposed convolution (x2), concatenates the
guidance of its resolution and applies two 3x3 conv-GN-ReLU; a 3x3 conv
gives one logit per class and position, at 4x the patch grid.
"""
from typing import List, Optional, Sequence

import torch
from mmcv.cnn import ConvModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.models.catseg.chunking import map_class_chunks
from mmseg_ovss.utils.errors import OVSSConfigError


def _as_tuple(value, length: int, what: str) -> tuple:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * length
    value = tuple(value)
    if len(value) != length:
        raise OVSSConfigError(
            f'{what}={value!r} needs one entry per decoder stage '
            f'({length})')
    return value


class GuidedUpsampleBlock(nn.Module):
    """x2 transposed conv to ``in_channels - guidance_channels``, concat of
    the guidance, then two 3x3 conv + GroupNorm(out/16) + ReLU (CAT-Seg
    ``Up`` and ``DoubleConv``)."""

    def __init__(self, in_channels: int, out_channels: int,
                 guidance_channels: int):
        super().__init__()
        if guidance_channels >= in_channels:
            raise OVSSConfigError(
                f'decoder stage: guidance_channels={guidance_channels} must '
                f'be smaller than its input channels {in_channels}')
        if out_channels < 16 or out_channels % (out_channels // 16):
            raise OVSSConfigError(
                f'decoder channels {out_channels}: GroupNorm uses '
                'channels // 16 groups, so give at least 16 channels, a '
                'multiple of the group count')
        self.guidance_channels = guidance_channels
        self.up = nn.ConvTranspose2d(in_channels,
                                     in_channels - guidance_channels,
                                     kernel_size=2, stride=2)
        norm_cfg = dict(type='GN', num_groups=out_channels // 16)
        self.convs = nn.Sequential(
            ConvModule(in_channels, out_channels, 3, padding=1, bias=False,
                       norm_cfg=norm_cfg, act_cfg=dict(type='ReLU')),
            ConvModule(out_channels, out_channels, 3, padding=1, bias=False,
                       norm_cfg=norm_cfg, act_cfg=dict(type='ReLU')))

    def forward(self, x: Tensor, guidance: Optional[Tensor]) -> Tensor:
        """(B*K, C, h, w) features, (B, G, 2h, 2w) guidance (None when
        ``guidance_channels`` is 0) -> (B*K, out, 2h, 2w)."""
        x = self.up(x)
        if self.guidance_channels:
            if guidance is None:
                raise OVSSConfigError(
                    'this decoder stage needs guidance maps')
            b = guidance.shape[0]
            k = x.shape[0] // b
            guidance = guidance.to(x.dtype).unsqueeze(1).expand(
                b, k, *guidance.shape[1:]).reshape(
                    x.shape[0], *guidance.shape[1:])
            x = torch.cat([x, guidance], dim=1)
        return self.convs(x)


@MODELS.register_module()
class UpsamplingDecoder(nn.Module):
    """CAT-Seg's upsampling decoder.

    Args:
        in_channels (int): aggregated cost-feature width d (128).
        guidance_in_channels (int | Sequence[int]): channels of the CLIP
            guidance maps (the ViT width: 768 for B/16, 1024 for L/14).
        channels (Sequence[int]): output channels of each stage ([64, 32]).
        guidance_channels (Sequence[int]): channels of the upsampled
            guidance maps ([256, 128]); stage i's map is upsampled
            ``2**(i+1)`` times (0: no guidance).
        guidance_proj_channels (Sequence[int]): projected guidance
            channels ([32, 16]).
    """

    def __init__(self, in_channels: int, guidance_in_channels=768,
                 channels: Sequence[int] = (64, 32),
                 guidance_channels: Sequence[int] = (256, 128),
                 guidance_proj_channels: Sequence[int] = (32, 16)):
        super().__init__()
        channels = tuple(channels)
        if not channels:
            raise OVSSConfigError('UpsamplingDecoder needs at least one '
                                  'stage in channels')
        stages = len(channels)
        guidance_in = _as_tuple(guidance_in_channels, stages,
                                'guidance_in_channels')
        guidance_channels = _as_tuple(guidance_channels, stages,
                                      'guidance_channels')
        proj = _as_tuple(guidance_proj_channels, stages,
                         'guidance_proj_channels')
        for g, p in zip(guidance_channels, proj):
            if (g == 0) != (p == 0):
                raise OVSSConfigError(
                    f'guidance_channels={guidance_channels} and '
                    f'guidance_proj_channels={proj}: a stage has guidance '
                    'in both or in neither')
        self.uses_guidance = any(guidance_channels)
        self.guidance_upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(gin, g, kernel_size=2 ** (i + 1),
                               stride=2 ** (i + 1)) if g else nn.Identity()
            for i, (gin, g) in enumerate(zip(guidance_in,
                                             guidance_channels)))
        self.guidance_projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(g, p, 3, padding=1), nn.ReLU())
            if g else nn.Identity()
            for g, p in zip(guidance_channels, proj))
        widths = (in_channels, *channels)
        self.stages = nn.ModuleList(
            GuidedUpsampleBlock(widths[i], widths[i + 1], proj[i])
            for i in range(stages))
        self.guidance_dims = proj
        self.head = nn.Conv2d(channels[-1], 1, 3, padding=1)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def scale(self) -> int:
        """Output resolution / cost-map resolution."""
        return 2 ** self.num_stages

    def prepare_guidance(self, maps: Sequence[Tensor]
                         ) -> List[Optional[Tensor]]:
        """Upsample and project the CLIP guidance maps (one per stage,
        shallowest block first, each (B, width, h, w)) once per image."""
        if not self.uses_guidance:
            return [None] * self.num_stages
        if len(maps) != self.num_stages:
            raise OVSSConfigError(
                f'the decoder has {self.num_stages} guided stages but got '
                f'{len(maps)} guidance maps: give the segmentor one '
                'guidance layer per stage (CAT-Seg ViT-B/16: (3, 7))')
        out = []
        for up, proj, dims, x in zip(self.guidance_upsamplers,
                                     self.guidance_projections,
                                     self.guidance_dims, maps):
            out.append(proj(up(x)) if dims else None)
        return out

    def forward(self, x: Tensor, guidance: Sequence[Optional[Tensor]],
                class_chunk_size: Optional[int] = None) -> Tensor:
        """(B, K, d, h, w) aggregated cost features and the prepared
        guidance -> (B, K, h * scale, w * scale) logits; classes are
        independent here, so ``class_chunk_size`` classes may run at a
        time."""
        def run(part: Tensor) -> Tensor:
            b, k = part.shape[:2]
            y = part.reshape(b * k, *part.shape[2:])
            for stage, g in zip(self.stages, guidance):
                y = stage(y, g)
            y = self.head(y)
            return y.view(b, k, *y.shape[-2:])

        return map_class_chunks(run, x, class_chunk_size)
