"""The interface between the training-free CLIP segmentor and its decode head.

A head turns the dense CLIP features of a batch of sliding windows into score
maps; the segmentor (``CLIPDenseSegmentor``) stitches them over the windows
(mmseg slide-inference semantics), resizes them to the original image size
and asks the head to turn the stitched maps into per-class scores, on which
the generic background rules (``prob_thd``, ``area_thd``) and the argmax run.

How to write a head (see ``docs/baselines.md``):

1. Subclass :class:`DenseCLIPHead` and register it in ``mmseg.registry.MODELS``.
2. Declare what the backbone must compute for you:
   ``required_attention_layers`` (vanilla attention maps of these blocks,
   0-based, negative indices count from the last block, or ``'all'`` /
   ``'all_but_last'``) and ``requires_cls_token``.
3. Implement :meth:`DenseCLIPHead.forward`: ``(DenseCLIPFeatures,
   VocabularyEmbeddings) -> (B, C, h, w)`` window maps on the patch grid,
   batched over the B windows. ``C`` is :meth:`num_output_maps`.
4. Optionally override :meth:`class_scores`, which maps stitched maps
   (N, C, H, W) at image size to per-class scores (N, num_classes, H, W) whose
   argmax is the prediction (e.g. softmax over queries, background rules).
5. Optionally override :meth:`image_maps`, called once per image on the
   stitched maps with the whole normalised image and the unmodified CLIP
   image encoder (FreeCP's per-image purification); it may change the number
   of channels. Window maps are resized to window pixels with
   ``window_resize_mode`` before stitching.
"""
from typing import Callable, List, Sequence, Union

from mmengine.model import BaseModule
from torch import Tensor

from mmseg_ovss.clip.features import DenseCLIPFeatures, VocabularyEmbeddings
from mmseg_ovss.utils.errors import OVSSConfigError

LayerSpec = Union[str, Sequence[int]]


def resolve_layer_indices(spec: LayerSpec, num_layers: int) -> List[int]:
    """Turn a head's ``required_attention_layers`` into sorted 0-based ids."""
    if isinstance(spec, str):
        if spec == 'all':
            return list(range(num_layers))
        if spec == 'all_but_last':
            return list(range(num_layers - 1))
        raise OVSSConfigError(
            f"unknown attention layer spec {spec!r}; use 'all', "
            "'all_but_last' or a list of block indices")
    indices = set()
    for index in spec:
        if not -num_layers <= int(index) < num_layers:
            raise OVSSConfigError(
                f'attention layer {index} does not exist in a ViT with '
                f'{num_layers} blocks; use an index in '
                f'[{-num_layers}, {num_layers - 1}]')
        indices.add(int(index) % num_layers)
    return sorted(indices)


class DenseCLIPHead(BaseModule):
    """Base class of the decode heads of ``CLIPDenseSegmentor``.

    Attributes:
        required_attention_layers: blocks whose vanilla attention
            softmax(q k^T / sqrt(d)) the backbone captures into
            ``features.attn_weights`` (key: 0-based block index).
        requires_cls_token: fill ``features.cls_token`` with the projected
            CLS embedding of the unmodified CLIP path.
        attention_heads: keep every attention head (None), only their mean
            (``'mean'``) or one head (an int); see ``DenseCLIPFeatures``.
        window_resize_mode: ``F.interpolate`` mode that resizes window maps
            to window pixels before stitching (``'bilinear'``).

    ``features.encode_image`` (crops -> projected CLS of the unmodified
    path) and ``vocab.encode_text`` (raw sentences -> L2-normalised
    embeddings) are always available.
    """
    required_attention_layers: LayerSpec = ()
    requires_cls_token: bool = False
    attention_heads: Union[None, str, int] = None
    window_resize_mode: str = 'bilinear'

    def num_output_maps(self, vocab: VocabularyEmbeddings) -> int:
        """Channels of the window maps; one per class by default."""
        return vocab.num_classes

    def forward(self, features: DenseCLIPFeatures,
                vocab: VocabularyEmbeddings) -> Tensor:
        """Return (B, num_output_maps, h, w) maps for B windows."""
        raise NotImplementedError

    def class_scores(self, maps: Tensor,
                     vocab: VocabularyEmbeddings) -> Tensor:
        """Map stitched maps (N, C, H, W) to per-class scores.

        The default treats the window maps as per-class scores already.
        """
        return maps

    def image_maps(self, maps: Tensor, images: Tensor,
                   vocab: VocabularyEmbeddings,
                   encode_image: Callable[[Tensor], Tensor],
                   patch_size: int) -> Tensor:
        """Turn stitched window maps (N, C, H, W) of N whole images into the
        maps given to :meth:`class_scores` (N, C', H, W); identity here.

        ``images`` are the (N, 3, H, W) normalised images, ``encode_image``
        maps crops to the projected CLS of the unmodified CLIP path and
        ``patch_size`` is the backbone's patch in pixels.
        """
        return maps
