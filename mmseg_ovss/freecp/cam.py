"""Class activation maps from dense CLIP features (FreeCP Eq. 1)."""
import torch
import torch.nn.functional as F
from torch import Tensor


def query_activation_maps(patch_tokens: Tensor, query_embeddings: Tensor,
                          logit_scale: float = 100.0) -> Tensor:
    """Eq. 1: softmax over queries of ``logit_scale`` x cosine similarity.

    Args:
        patch_tokens: (B, D, h, w) dense CLIP features.
        query_embeddings: (Q, D) text embeddings (one row per query).
        logit_scale: CLIP's temperature; the authors use the model's own
            ``logit_scale.exp()`` (100 for OpenAI CLIP).
    Returns:
        (B, Q, h, w) activation maps that sum to 1 over queries.
    """
    feats = F.normalize(patch_tokens.float(), dim=1)
    text = F.normalize(query_embeddings.float().to(feats.device), dim=-1)
    logits = torch.einsum('bdhw,qd->bqhw', feats, text)
    return (logit_scale * logits).softmax(dim=1)


def minmax_normalize(maps: Tensor, per_channel: bool,
                     eps: float = 1e-8) -> Tensor:
    """Min-max normalise (B, C, h, w) maps to [0, 1].

    ``per_channel=False`` uses one min and max per batch item over all
    channels and positions (the authors' CAM normalisation); ``True`` uses
    one per channel (the authors' normalisation of refined maps).
    """
    dims = (-2, -1) if per_channel else (-3, -2, -1)
    low = maps.amin(dim=dims, keepdim=True)
    high = maps.amax(dim=dims, keepdim=True)
    return (maps - low) / (high - low + eps)


def queries_to_classes(query_maps: Tensor, query_to_class: Tensor,
                       num_classes: int) -> Tensor:
    """Max over each class's queries (synonyms): (B, Q, h, w) -> (B, K, h, w).

    A class without any query gets an all-zero map.
    """
    b, q, h, w = query_maps.shape
    index = query_to_class.to(query_maps.device).view(1, q, 1, 1)
    out = query_maps.new_zeros(b, num_classes, h, w)
    return out.scatter_reduce(1, index.expand(b, q, h, w), query_maps,
                              reduce='amax', include_self=False)
