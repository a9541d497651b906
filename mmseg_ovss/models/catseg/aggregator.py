"""The cost aggregator: N layers of spatial then class aggregation (CAT-Seg
Sec. 3.3, Fig. 3; ``KU-CVLAB/CAT-Seg`` ``cat_seg/modeling/transformer/
model.py``, ``AggregatorLayer``; N = 2 for ViT-B/16 and ViT-L/14 in its
``configs/vitb_384.yaml`` and ``configs/vitl_336.yaml``)."""
from typing import Optional

from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.models.catseg.chunking import map_class_chunks
from mmseg_ovss.utils.errors import OVSSConfigError


class AggregationLayer(nn.Module):
    """One spatial aggregation (``spatial``) followed by one class
    aggregation (``classwise``)."""

    def __init__(self, spatial: nn.Module, classwise: nn.Module):
        super().__init__()
        self.spatial = spatial
        self.classwise = classwise

    def forward(self, x: Tensor, appearance: Optional[Tensor],
                text: Optional[Tensor],
                class_chunk_size: Optional[int] = None) -> Tensor:
        """(B, K, h, w, d) -> (B, K, h, w, d); the spatial step, which
        treats classes independently, may run ``class_chunk_size`` classes
        at a time."""
        x = map_class_chunks(lambda part: self.spatial(part, appearance), x,
                             class_chunk_size)
        return self.classwise(x, text)


@MODELS.register_module()
class CostAggregator(nn.Module):
    """``num_layers`` x [spatial aggregation, class aggregation].

    Args:
        embed_dims (int): cost-feature width d (128).
        appearance_dims (int): appearance-guidance width (128; 0: none).
        text_dims (int): text-guidance width (128; 0: none).
        num_layers (int): layers (2).
        spatial (dict): config of the spatial step, built with
            ``embed_dims`` and ``guidance_dims=appearance_dims``
            (default ``SpatialAggregation``: ``num_heads=4``,
            ``window_size=12``, ``mlp_ratio=4``).
        classwise (dict): config of the class step, built with
            ``embed_dims`` and ``guidance_dims=text_dims`` (default
            ``ClassAggregation``: linear attention, 4 heads, pooling 2x2 in
            training and 1x1 at test, ``pad_len=256``).
    """

    def __init__(self, embed_dims: int, appearance_dims: int, text_dims: int,
                 num_layers: int = 2, spatial: Optional[dict] = None,
                 classwise: Optional[dict] = None):
        super().__init__()
        if num_layers < 0:
            raise OVSSConfigError(f'num_layers={num_layers} must be >= 0')
        self.embed_dims = embed_dims
        layers = []
        for _ in range(num_layers):
            spatial_cfg = dict(type='SpatialAggregation', **(spatial or {}))
            spatial_cfg.setdefault('embed_dims', embed_dims)
            spatial_cfg.setdefault('guidance_dims', appearance_dims)
            class_cfg = dict(type='ClassAggregation', **(classwise or {}))
            class_cfg.setdefault('embed_dims', embed_dims)
            class_cfg.setdefault('guidance_dims', text_dims)
            layers.append(AggregationLayer(MODELS.build(spatial_cfg),
                                           MODELS.build(class_cfg)))
        self.layers = nn.ModuleList(layers)

    def forward(self, cost_feature: Tensor, appearance: Optional[Tensor],
                text: Optional[Tensor],
                class_chunk_size: Optional[int] = None) -> Tensor:
        """(B, K, d, h, w) cost feature, (B, Ga, h, w) appearance guidance
        and (B, K, Gt) text guidance -> (B, K, d, h, w)."""
        x = cost_feature.permute(0, 1, 3, 4, 2)  # channel-last tokens
        for layer in self.layers:
            x = layer(x, appearance, text, class_chunk_size)
        return x.permute(0, 1, 4, 2, 3).contiguous()
