"""Per-pixel binary cross-entropy over every class of the vocabulary.

CAT-Seg (Cho et al., CVPR 2024, Sec. 3.5) and DCP-CLIP (Sec. III-E) train
with a binary cross-entropy between the sigmoid of each class's logit and
the one-hot ground truth, at every pixel. In the authors' code
(``KU-CVLAB/CAT-Seg`` ``cat_seg/cat_seg_model.py``, ``CATSeg.forward``)
the logits are first resized to the label size and ignored pixels keep an
all-zero target and count in the mean (``ignore_mode='negative'``, the
default here); ``ignore_mode='exclude'`` drops them instead.
"""
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError

IGNORE_MODES = ('negative', 'exclude')


def pixel_bce_with_logits(logits: Tensor, labels: Tensor, ignore_index: int,
                          ignore_mode: str = 'negative') -> Tensor:
    """Mean binary cross-entropy of (B, C, H, W) logits against (B, H, W)
    integer labels (one-hot over C).

    ``BCE(x, y) = softplus(x) - x y``, so the loss is the sum of
    ``softplus`` over every logit minus the logit of each pixel's labelled
    class; the one-hot target is never materialised. ``'negative'``: ignored
    pixels are negatives for every class and the mean runs over B*C*H*W
    (CAT-Seg's code); ``'exclude'``: over the C classes of valid pixels.
    """
    if ignore_mode not in IGNORE_MODES:
        raise OVSSConfigError(
            f'ignore_mode={ignore_mode!r}; use one of {IGNORE_MODES}')
    if logits.dim() != 4 or labels.shape != (logits.shape[0],
                                             *logits.shape[2:]):
        raise OVSSConfigError(
            f'pixel BCE needs (B, C, H, W) logits and (B, H, W) labels, got '
            f'{tuple(logits.shape)} and {tuple(labels.shape)}')
    logits = logits.float()
    valid = labels != ignore_index
    index = torch.where(valid, labels, torch.zeros_like(labels)).long()
    positive = logits.gather(1, index.unsqueeze(1)).squeeze(1)
    softplus = F.softplus(logits)
    if ignore_mode == 'negative':
        total = softplus.sum() - (positive * valid).sum()
        return total / logits.numel()
    total = (softplus.sum(1) * valid).sum() - (positive * valid).sum()
    count = valid.sum() * logits.shape[1]
    return total / count.clamp(min=1)


@MODELS.register_module()
class PixelBCELoss(nn.Module):
    """Binary cross-entropy over all classes at each pixel (CAT-Seg Sec.
    3.5, DCP-CLIP Sec. III-E), with mmseg's loss call
    ``loss(cls_score, label, weight=None, ignore_index=255)``.

    Args:
        ignore_mode (str): ``'negative'`` (CAT-Seg's code, default) or
            ``'exclude'``, see :func:`pixel_bce_with_logits`.
        loss_weight (float): multiplies the loss.
        loss_name (str): the key in the loss dict (must start with
            ``loss_`` so that mmengine sums it).
    """

    def __init__(self, ignore_mode: str = 'negative',
                 loss_weight: float = 1.0, loss_name: str = 'loss_bce'):
        super().__init__()
        if ignore_mode not in IGNORE_MODES:
            raise OVSSConfigError(
                f'PixelBCELoss ignore_mode={ignore_mode!r}; use one of '
                f'{IGNORE_MODES}')
        if not str(loss_name).startswith('loss_'):
            raise OVSSConfigError(
                f'loss_name={loss_name!r} must start with "loss_" (mmengine '
                'only sums the log entries named so)')
        self.ignore_mode = ignore_mode
        self.loss_weight = float(loss_weight)
        self._loss_name = str(loss_name)

    def forward(self, cls_score: Tensor, label: Tensor, weight=None,
                ignore_index: int = 255, **kwargs) -> Tensor:
        if weight is not None:
            raise OVSSConfigError('PixelBCELoss takes no per-pixel weight')
        return self.loss_weight * pixel_bce_with_logits(
            cls_score, label, ignore_index, self.ignore_mode)

    @property
    def loss_name(self) -> str:
        return self._loss_name
