"""The per-stage maps of one PnP-OVSS image (paper Figs. 2-4).

Filled by :meth:`mmseg_ovss.models.segmentors.pnp_ovss.PnPOVSS.segment_stages`
(the segmentor's own computation, recorded as it runs; the plain ``segment``
records nothing).
"""
from dataclasses import dataclass, field
from typing import List, Optional

from torch import Tensor


@dataclass
class PnPStages:
    """Maps of each stage of PnP-OVSS for one image.

    Attributes:
        class_ids: the K captioned vocabulary classes, in channel order.
        attention: per Salience-DropOut pass, (K, h, w) cross-attention of
            each class (the chosen layer/head, summed over the class's
            caption tokens; Fig. 2 (a)), dropped patches 0.
        gradcam: per pass, (K, h, w) attention x positive ITM gradient
            (Eq. 1; Fig. 2 (b)); empty when ``use_gradcam=False``.
        keeps: per pass, (h, w) bool, the patches shown to the model
            (S(t) of Eq. 3; Fig. 4's black squares are the False ones).
        salience: (K, h, w) the maps summed over the passes (Fig. 2 (c)).
        normalized: (K, h, w) after the per-class min-max and threshold
            (or the softmax over classes), §3.3.
        resized: (C, H, W) resized to the image, with the "all classes
            off" background channel first when ``background`` is on.
        blurred: (C, H, W) after the Gaussian blur, or None (blur off).
        crf: (C, H, W) after DenseCRF, or None (CRF off).
        scores: (C, H, W) the final channel scores (what ``segment``
            returns).
        labels: (H, W) the predicted dataset labels.
        channel_labels: (C, ) the dataset label of each channel.
    """
    class_ids: List[int]
    attention: List[Tensor] = field(default_factory=list)
    gradcam: List[Tensor] = field(default_factory=list)
    keeps: List[Tensor] = field(default_factory=list)
    salience: Optional[Tensor] = None
    normalized: Optional[Tensor] = None
    resized: Optional[Tensor] = None
    blurred: Optional[Tensor] = None
    crf: Optional[Tensor] = None
    scores: Optional[Tensor] = None
    labels: Optional[Tensor] = None
    channel_labels: Optional[Tensor] = None
