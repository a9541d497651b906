"""Relationship descriptors: ZegCLIP's and CLIP-RC's regional ones (Eqs. 5-6).

ZegCLIP (Zhou et al., CVPR 2023, Sec. 3.3): one query per class c,
``[T_c ⊙ G ; T_c]`` -> Linear(2D -> D) (``ZiqinZhou66/ZegCLIP``
``models/decode_heads/decode_seg.py``, ``get_qs`` and ``q_proj``).

CLIP-RC (Zhang et al., CVPR 2024, Sec. 3.3): the region features are fused
with the global one, ``R_a = Up(G) + R`` (Eq. 5, M x D), and every region m
and class c gives ``R̂_{m,c} = [T_c ⊙ R_a,m ; T_c]`` (Eq. 6, M x C x 2D),
then the same linear layer: M·C queries (``Jittor/JSeg``
``cliprc_head.py``, ``combine_token``; region-major order, query index
``m * C + c``). ZegCLIP's descriptor is the case without regions (M = 1
with R_a = G). The pre-projection descriptors R̂ are the recovery targets
of Eq. 10.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError


@MODELS.register_module()
class RelationshipDescriptors(BaseModule):
    """Eqs. 5-6: (regional) relationship descriptors and their queries.

    Args:
        text_channels (int): D of the text embeddings T (equal to that of G
            and R: the Hadamard product needs it).
        out_channels (int): the decoder width of the queries.
    """

    def __init__(self, text_channels: int, out_channels: int,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.text_channels = int(text_channels)
        self.project = nn.Linear(2 * self.text_channels, out_channels)

    def forward(self, text: Tensor, cls: Tensor,
                regions: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """T (C, D), G (B, D), R (B, M, D) or None ->

        * R̂ (B, M, C, 2D), the descriptors (M = 1 without regions);
        * queries (B, M, C, out), their projection.
        """
        if text.shape[-1] != cls.shape[-1] or (
                regions is not None and regions.shape[-1] != cls.shape[-1]):
            raise OVSSConfigError(
                f'relationship descriptors multiply text ({text.shape[-1]} '
                f'channels) with image tokens ({cls.shape[-1]} channels); '
                'both must be CLIP embeddings of the same model')
        if text.shape[-1] != self.text_channels:
            raise OVSSConfigError(
                f'RelationshipDescriptors built for {self.text_channels}-d '
                f'text got {text.shape[-1]}-d embeddings; set the head\'s '
                'in_channels to the CLIP embedding width')
        fused = cls.unsqueeze(1)                        # R_a = G
        if regions is not None:
            fused = regions + fused                     # Eq. 5
        batch, num_regions = fused.shape[:2]
        text = text.to(fused.dtype)
        product = fused.unsqueeze(2) * text             # (B, M, C, D)
        plain = text.expand(batch, num_regions, -1, -1)
        descriptors = torch.cat([product, plain], dim=-1)   # Eq. 6
        # the Linear on [T ⊙ R_a ; T] is W_1 (T ⊙ R_a) + W_2 T + b: its
        # text half is the same for every image and region, so it is
        # computed once per class (C rows instead of B·M·C)
        weight, bias = self.project.weight, self.project.bias
        dims = self.text_channels
        queries = F.linear(product, weight[:, :dims]) + \
            F.linear(text, weight[:, dims:], bias)
        return descriptors, queries
