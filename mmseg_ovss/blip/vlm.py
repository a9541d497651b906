"""The vision-language model under PnP-OVSS: BLIP or BridgeTower.

PnP-OVSS (Luo et al., CVPR 2024, §4) runs on any VLM with an image-text
matching (ITM) head and text-to-image cross-attention; the paper uses BLIP
and BridgeTower. Both adapters expose the same interface to the segmentor
(:class:`~mmseg_ovss.blip.cross_attention.BlipCrossAttention`,
:class:`~mmseg_ovss.blip.bridgetower.BridgeTowerCrossAttention`):
``layer`` / ``head`` (0-based, ``head=None`` = mean over heads),
``num_layers``, ``num_heads``, ``max_text_tokens``, ``patch_size``,
``caption_start_id(tokenizer)``, ``encode_image(pixels)`` and
``token_maps(...) -> TokenMaps``.
"""
from typing import Optional, Tuple

from mmseg_ovss.utils.errors import OVSSConfigError


def build_cross_attention(blip: Optional[dict], bridgetower: Optional[dict],
                          layer: int, head: Optional[int]) -> Tuple:
    """Load the VLM given by exactly one of ``blip`` / ``bridgetower``.

    Args:
        layer: 1-based cross-attention layer.
        head: 0-based head, None for the mean over heads.
    Returns:
        ``(cross_attention adapter, tokenizer)``.
    """
    if (blip is None) == (bridgetower is None):
        raise OVSSConfigError(
            'PnP-OVSS needs exactly one VLM: model.blip=dict(pretrained=...) '
            'or model.bridgetower=dict(pretrained=...); to switch a BLIP '
            'config to BridgeTower set model.blip=None.')
    if blip is not None:
        from mmseg_ovss.blip.cross_attention import BlipCrossAttention
        from mmseg_ovss.blip.loading import load_blip_itm
        model, tokenizer = load_blip_itm(**blip)
        return BlipCrossAttention(model, layer - 1, head), tokenizer
    from mmseg_ovss.blip.bridgetower import (BridgeTowerCrossAttention,
                                             load_bridgetower_itm)
    model, tokenizer = load_bridgetower_itm(**bridgetower)
    return BridgeTowerCrossAttention(model, layer - 1, head), tokenizer
