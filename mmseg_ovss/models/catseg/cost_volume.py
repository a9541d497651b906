"""The cost volume and its embedding (CAT-Seg Sec. 3.2-3.3; DCP-CLIP Eq. 6).

The cost volume is the cosine similarity between every dense CLIP patch
embedding and every per-template class embedding:
``C(i, c, p) = <F_i, T_{c,p}> / (|F_i| |T_{c,p}|)`` for position i, class c
and prompt template p; the P templates are its channels. Each class's
(P, h, w) slice is then embedded by one convolution (7x7, P -> d = 128 in
``KU-CVLAB/CAT-Seg`` ``cat_seg/modeling/transformer/model.py``,
``Aggregator.correlation`` and ``Aggregator.corr_embed``).
"""
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError


def cosine_cost_volume(patches: Tensor, templates: Tensor) -> Tensor:
    """(B, K, P, h, w) cosine similarities of (B, D, h, w) patch
    embeddings and class-template embeddings, either shared by the batch
    (K, P, D) or per image (B, K, P, D)."""
    if patches.dim() != 4 or templates.dim() not in (3, 4) or \
            templates.shape[-1] != patches.shape[1]:
        raise OVSSConfigError(
            f'cost volume needs (B, D, h, w) patches and (K, P, D) or '
            f'(B, K, P, D) templates of the same D, got '
            f'{tuple(patches.shape)} and {tuple(templates.shape)}')
    patches = F.normalize(patches, dim=1)
    templates = F.normalize(templates, dim=-1).to(patches.dtype)
    if templates.dim() == 3:
        return torch.einsum('bdhw,kpd->bkphw', patches, templates)
    return torch.einsum('bdhw,bkpd->bkphw', patches, templates)


@MODELS.register_module()
class CostEmbedding(nn.Module):
    """One convolution over each class's cost slice: (B, K, P, h, w) ->
    (B, K, d, h, w), classes folded into the batch (CAT-Seg
    ``Aggregator.conv1``: ``nn.Conv2d(P, d, 7, padding=3)``).

    Args:
        in_channels (int): P, the number of prompt templates.
        out_channels (int): d, the cost-feature width.
        kernel_size (int): odd kernel size (7 in CAT-Seg).
    """

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: int = 7):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise OVSSConfigError(
                f'CostEmbedding kernel_size={kernel_size!r} must be odd '
                '(7 in CAT-Seg) so that the map keeps its size')
        self.in_channels = int(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=kernel_size // 2)

    def forward(self, cost: Tensor) -> Tensor:
        b, k, p, h, w = cost.shape
        if p != self.in_channels:
            raise OVSSConfigError(
                f'the cost volume has {p} template channels but the cost '
                f'embedding was built for {self.in_channels}: set the '
                'head\'s num_templates to the text encoder\'s template count')
        out = self.conv(cost.reshape(b * k, p, h, w))
        return out.view(b, k, *out.shape[1:])
