"""What :class:`~mmseg_ovss.models.catseg.segmentor.CostVolumeSegmentor`
hands its head: CLIP's dense features at one resolution.

CAT-Seg (Cho et al., CVPR 2024, Sec. 3.2 and 3.4; ``KU-CVLAB/CAT-Seg``
``cat_seg/cat_seg_model.py``) reads three things of the CLIP image tower:
the dense patch embeddings of the last block in CLIP's joint space (the cost
volume's image side and the appearance guidance), and the patch tokens of two
intermediate blocks (the upsampling decoder's guidance). DCP-CLIP (Sec.
III-A, III-C) also reads the projected CLS embedding (image-level scores of
its category selection) and attention weights of CLIP blocks (its spatial
enhanced decoder).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from torch import Tensor


@dataclass
class CLIPDenseFeatures:
    """Dense CLIP features of a batch of images.

    Attributes:
        patches: (B, D, h, w) dense patch embeddings after ``ln_post`` and
            the visual projection (D = CLIP's joint width, 512 for ViT-B/16),
            not L2-normalised.
        cls: (B, D) projected CLS embedding.
        guidance: 0-based block index -> (B, width, h, w) patch tokens after
            that block (no ``ln_post``), the decoder guidance layers.
        attention: block index -> attention weights of that block: (B, h*w)
            head-averaged CLS-to-patch weights, or (B, heads, N, N) over all
            N tokens, as the segmentor's ``attention_form`` says.
    """
    patches: Tensor
    cls: Tensor
    guidance: Dict[int, Tensor] = field(default_factory=dict)
    attention: Dict[int, Tensor] = field(default_factory=dict)

    @property
    def grid(self) -> Tuple[int, int]:
        """The (h, w) patch grid."""
        return tuple(self.patches.shape[-2:])

    def guidance_maps(self) -> List[Tensor]:
        """The guidance maps, shallowest block first."""
        return [self.guidance[index] for index in sorted(self.guidance)]
