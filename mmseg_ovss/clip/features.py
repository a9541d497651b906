"""Data passed between the dense CLIP backbone, the text encoder and the heads.

These two containers are the contract between ``mmseg_ovss.clip`` (which
produces them) and every head that consumes them (cosine head, FreeCP head).
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

from torch import Tensor


@dataclass
class DenseCLIPFeatures:
    """What the dense CLIP image encoder returns for a batch of windows.

    Attributes:
        patch_tokens: (B, D, h, w) dense-strategy output after ``ln_post`` and
            the visual projection (not L2-normalised).
        cls_token: (B, D) projected CLS embedding of the *unmodified* last
            block, or None when not requested.
        attn_weights: layer index (0-based) -> (B, heads, 1 + h*w, 1 + h*w)
            softmax(q k^T / sqrt(d)) of the vanilla attention of that block,
            captured only for the layers a head asks for. With
            ``attn_heads`` set, the heads are reduced to one map:
            (B, 1, 1 + h*w, 1 + h*w).
        images: (B, 3, H, W) the normalised window pixels given to CLIP.
        patch_size: pixels per patch side.
        encode_image: callable mapping normalised crops (N, 3, h, w) to the
            (N, D) projected CLS embeddings of the unmodified CLIP path;
            it takes an optional ``dtype=`` to encode at another precision
            (``OpenCLIPViT.encode_cls``).
        encode_regions: callable mapping ``(window_index (R, ), boxes
            (R, 4))`` pixel boxes of the windows to (R, D) projected CLS
            embeddings read from the windows' own last-block input tokens
            (``OpenCLIPViT.encode_window_regions``), or None.
        attn_heads: how ``attn_weights`` were reduced over heads: None
            (every head kept), ``'mean'`` (their average) or a head index.
        logit_scale: 0-dim temperature ``logit_scale.exp()`` of the CLIP
            model (FreeCP's CAM, Eq. 1), or None when unknown.
    """
    patch_tokens: Tensor
    images: Tensor
    patch_size: int
    cls_token: Optional[Tensor] = None
    attn_weights: Dict[int, Tensor] = field(default_factory=dict)
    encode_image: Optional[Callable[[Tensor], Tensor]] = None
    encode_regions: Optional[Callable[[Tensor, Tensor], Tensor]] = None
    attn_heads: Union[None, str, int] = None
    logit_scale: Optional[Tensor] = None


@dataclass
class VocabularyEmbeddings:
    """Text side of one vocabulary: one row per query (class or synonym).

    Attributes:
        query_embeddings: (Q, D) L2-normalised text embeddings.
        query_to_class: (Q,) long tensor, the class index of each query.
        class_names: the display name of each class (its first synonym).
        synonyms: every query string of each class.
        background_class: index of the background class when the vocabulary
            has one (VOC21, PC60, COCO-Object), else None.
        encode_text: callable mapping raw sentences to (N, D) L2-normalised
            embeddings (no template applied), e.g. for descriptions.
        template_embeddings: (Q, T, D) the L2-normalised embedding of each
            query under each of the T templates (``query_embeddings`` is
            their normalised mean), or None when not asked for
            (``embed_vocabulary(vocab, with_templates=True)``).
    """
    query_embeddings: Tensor
    query_to_class: Tensor
    class_names: List[str]
    synonyms: List[List[str]]
    background_class: Optional[int] = None
    encode_text: Optional[Callable[[List[str]], Tensor]] = None
    template_embeddings: Optional[Tensor] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
