"""The interface between the training-free CLIP segmentor and its decode head.

A head turns the dense CLIP features of a batch of sliding windows into score
maps on the patch grid; the segmentor (``CLIPDenseSegmentor``) keeps them
there, as :class:`StitchedMaps` (the windows' grids and where they sit in
the image), and renders bands of output pixels from them: each window's map
resized to window pixels, stitched with mmseg's slide-inference rule
(overlaps averaged), resized to the original image size and turned by the
head into per-class scores, on which the generic background rules
(``prob_thd``, ``area_thd``) and the argmax run. Full-size maps of every
class are never held unless the head or PAMR needs the whole image.

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
   (N, C, H', W') to per-class scores (N, num_classes, H', W') whose argmax
   is the prediction (e.g. softmax over queries, background rules). With
   ``pixelwise_scores = True`` (default) it is called on bands of output
   rows; set it False when a pixel's scores depend on other pixels (e.g. a
   per-class min-max over the image): it then gets the whole image.
5. Optionally override :meth:`image_maps`, called once per image on the
   :class:`StitchedMaps` with the whole normalised image and the unmodified
   CLIP image encoder (FreeCP's per-image purification); it may change the
   number of channels. Window maps are resized to window pixels with
   ``window_resize_mode``.

The head is an mmseg decode head in interface: :meth:`DenseCLIPHead.predict`
(``inputs = (DenseCLIPFeatures, VocabularyEmbeddings)``) gives the window
maps at input size, as mmseg's ``BaseDecodeHead.predict`` does, for the
segmentor's ``encode_decode``; :meth:`DenseCLIPHead.loss` refuses training.
"""
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from mmseg_ovss.clip.features import DenseCLIPFeatures, VocabularyEmbeddings
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

LayerSpec = Union[str, Sequence[int]]
Window = Tuple[int, int, int, int]
_CORNER_MODES = ('linear', 'bilinear', 'bicubic', 'trilinear')


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


def interpolate(maps: Tensor, size: Tuple[int, int], mode: str) -> Tensor:
    """``F.interpolate`` with ``align_corners=False`` where it applies."""
    corners = False if mode in _CORNER_MODES else None
    return F.interpolate(maps, size=tuple(size), mode=mode,
                         align_corners=corners)


def _source_span(mode: str, factor: int, start: int, stop: int,
                 height: int) -> Tuple[int, int]:
    """Grid rows [first, last) that output rows [start, stop) of an
    integer ``factor`` upsampling read: exact for a power-of-two factor
    (every source index is a float without rounding), one spare grid row
    each side (two for bicubic) otherwise."""
    end = stop - 1
    if factor & (factor - 1):
        margin = 2 if mode == 'bicubic' else 1
        first, last = start // factor - margin, -(-stop // factor) + margin
    elif mode == 'nearest':
        first, last = start // factor, end // factor + 1
    elif mode == 'nearest-exact':
        first = (2 * start + 1) // (2 * factor)
        last = (2 * end + 1) // (2 * factor) + 1
    else:  # (bi)linear: rows i0, i0 + 1; bicubic: i0 - 1 ... i0 + 2
        taps = (1, 3) if mode == 'bicubic' else (0, 2)
        first = (2 * start + 1 - factor) // (2 * factor) - taps[0]
        last = max((2 * end + 1 - factor) // (2 * factor), 0) + taps[1]
    return max(first, 0), min(last, height)


def resize_rows(grid: Tensor, size: Tuple[int, int], start: int, stop: int,
                mode: str) -> Tensor:
    """Rows ``[start, stop)`` of ``interpolate(grid, size, mode)``.

    When ``size[0]`` is a multiple of the grid height (a patch grid resized
    to its pixels) only the grid rows those output rows read are resized,
    at the same scale, so that no border clamping differs. For a
    power-of-two factor (16-pixel patches) this gives the very numbers of
    the full resize; otherwise (14-pixel patches) they agree to float32
    rounding of the source index.
    """
    height, out_h = grid.shape[-2], size[0]
    if grid.shape[1] == 0:  # no channel (F.interpolate rejects it)
        return grid.new_zeros((*grid.shape[:2], stop - start, size[1]))
    if (start, stop) == (0, out_h):
        return interpolate(grid, size, mode)
    if out_h % height or mode not in ('nearest', 'nearest-exact',
                                      'bilinear', 'bicubic'):
        return interpolate(grid, size, mode)[..., start:stop, :]
    factor = out_h // height
    first, last = _source_span(mode, factor, start, stop, height)
    part = interpolate(grid[..., first:last, :],
                       ((last - first) * factor, size[1]), mode)
    offset = first * factor
    return part[..., start - offset:stop - offset, :]


def band_height(channels: int, width: int, budget_bytes: float,
                multiple: int = 1) -> int:
    """Rows of a (channels, rows, width) fp32 band within ``budget_bytes``
    (at least ``multiple``, and a multiple of it)."""
    rows = int(budget_bytes // max(4 * channels * width, 1))
    return max(multiple, rows // multiple * multiple)


class StitchedMaps:
    """Head maps of one image, kept on the windows' patch grids.

    Window ``i`` has the map ``grids[i]`` (C, h, w); it is resized to
    ``window_size`` pixels (``mode``, as ``F.interpolate``), cropped to the
    size of ``boxes[i] = (y1, y2, x1, x2)`` and placed there; where windows
    overlap their maps are averaged (mmseg's slide inference). The
    (1, C, H, W) result is rendered on demand, a band of rows at a time
    (:meth:`rows`), so that memory per class follows the patch grid; a band
    equals the same rows of :meth:`render`. Bilinear maps are stitched by
    :class:`SeparableStitch` (matrix products, no window held at pixel
    size; see ``docs/clip_backbone.md`` for the time), other modes window by
    window.

    Args:
        grids: (n, C, h, w) window maps.
        boxes: n windows ``(y1, y2, x1, x2)`` in image pixels.
        image_size: (H, W) of the stitched maps.
        window_size: (h', w') pixels each grid is resized to, at least the
            size of every box (windows padded to whole patches).
        mode: ``F.interpolate`` mode of that resize.
    """

    def __init__(self, grids: Tensor, boxes: Sequence[Window],
                 image_size: Tuple[int, int],
                 window_size: Tuple[int, int], mode: str = 'bilinear'):
        self.grids = grids
        self.boxes = [tuple(int(v) for v in box) for box in boxes]
        self.image_size = tuple(int(v) for v in image_size)
        self.window_size = tuple(int(v) for v in window_size)
        self.mode = mode
        self._stitch: Optional[SeparableStitch] = None
        if len(self.boxes) != grids.shape[0]:
            raise OVSSConfigError(
                f'StitchedMaps got {grids.shape[0]} window maps for '
                f'{len(self.boxes)} windows')
        for y1, y2, x1, x2 in self.boxes:
            if y2 - y1 > self.window_size[0] or x2 - x1 > self.window_size[1]:
                raise OVSSConfigError(
                    f'window {(y1, y2, x1, x2)} is larger than the '
                    f'{self.window_size} pixels its map is resized to')

    @classmethod
    def from_grid(cls, grid: Tensor, image_size: Tuple[int, int],
                  patch_size: int, mode: str = 'bilinear') -> 'StitchedMaps':
        """One (1, C, h, w) map covering the image's patch grid: resized to
        (h * p, w * p) pixels and cropped to ``image_size``."""
        height, width = image_size
        return cls(grid, [(0, height, 0, width)], image_size,
                   (grid.shape[-2] * patch_size, grid.shape[-1] * patch_size),
                   mode)

    @classmethod
    def from_tensor(cls, maps: Tensor) -> 'StitchedMaps':
        """Wrap full-size (1, C, H, W) maps."""
        height, width = maps.shape[-2:]
        return cls(maps, [(0, height, 0, width)], (height, width),
                   (height, width), 'nearest')

    @property
    def channels(self) -> int:
        return self.grids.shape[1]

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        return (1, self.channels, *self.image_size)

    def _window_rows(self, index: int, start: int, stop: int) -> Tensor:
        grid = self.grids[index:index + 1]
        if tuple(grid.shape[-2:]) == self.window_size:
            return grid[..., start:stop, :]  # already at pixel size
        return resize_rows(grid, self.window_size, start, stop, self.mode)

    @property
    def _separable(self) -> bool:
        """Bilinear window maps that need a resize are stitched as matrix
        products (:class:`SeparableStitch`)."""
        return (self.mode == 'bilinear' and self.channels > 0
                and tuple(self.grids.shape[-2:]) != self.window_size)

    def rows(self, start: int, stop: int) -> Tensor:
        """(1, C, stop - start, W) rows of the stitched maps."""
        if self._separable:
            if self._stitch is None:
                self._stitch = SeparableStitch(
                    self.grids, self.boxes, self.image_size,
                    self.window_size)
            return self._stitch.rows(start, stop)
        return self._rows_by_windows(start, stop)

    def _rows_by_windows(self, start: int, stop: int) -> Tensor:
        """:meth:`rows` as mmseg's slide inference writes it: each window's
        map resized, added where it sits, divided by the count."""
        width = self.image_size[1]
        total = self.grids.new_zeros((1, self.channels, stop - start, width))
        count = self.grids.new_zeros((1, 1, stop - start, width))
        for index, (y1, y2, x1, x2) in enumerate(self.boxes):
            top, bottom = max(start, y1), min(stop, y2)
            if top >= bottom:
                continue
            part = self._window_rows(index, top - y1, bottom - y1)
            total[..., top - start:bottom - start, x1:x2] += \
                part[..., :x2 - x1]
            count[..., top - start:bottom - start, x1:x2] += 1
        return total.div_(count)

    def render(self) -> Tensor:
        """The whole (1, C, H, W) stitched maps."""
        return self.rows(0, self.image_size[0])

    def pooled(self, patch_size: int, budget_bytes: float = 2 ** 28
               ) -> Tensor:
        """Mean over each ``patch_size`` square of the image's patch grid
        (ceil(H / p) x ceil(W / p), border replicated), computed on bands
        of rows: equals ``F.avg_pool2d`` of the replicate-padded
        :meth:`render`."""
        height, width = self.image_size
        grid_h, grid_w = -(-height // patch_size), -(-width // patch_size)
        out = self.grids.new_zeros((1, self.channels, grid_h, grid_w))
        if not self.channels:
            return out
        step = band_height(self.channels, grid_w * patch_size, budget_bytes,
                           patch_size)
        for top in range(0, grid_h * patch_size, step):
            bottom = min(top + step, grid_h * patch_size)
            band = self.rows(top, min(bottom, height))
            pad = (0, grid_w * patch_size - width, 0,
                   bottom - min(bottom, height))
            if any(pad):
                band = F.pad(band, pad, mode='replicate')
            out[..., top // patch_size:bottom // patch_size, :] = \
                F.avg_pool2d(band, patch_size)
        return out


def linear_source(in_size: int, out_size: int, device=None):
    """Source rows and weights of a 1-D linear resize, as ``F.interpolate``
    computes them (``align_corners=False``, float32): output ``d`` reads
    ``i0[d]`` with ``w0[d]`` and ``i1[d]`` with ``w1[d]``."""
    index = torch.arange(out_size, device=device)
    if in_size == out_size:
        ones = torch.ones(out_size, device=device)
        return index, index, ones, torch.zeros_like(ones)
    scale = torch.tensor(in_size, dtype=torch.float32, device=device) / \
        out_size
    src = (scale * (index.float() + 0.5) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    w1 = (src - i0.float()).clamp(0, 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, 1 - w1, w1


def linear_resize_matrix(in_size: int, out_size: int, dtype=None,
                         device=None) -> Tensor:
    """(out_size, in_size) matrix ``R`` of a 1-D linear resize: ``R @ x``
    is ``F.interpolate(x, out_size, mode='linear', align_corners=False)``
    along that axis (the source indices and weights of
    :func:`linear_source`; two taps per row, summing to 1)."""
    i0, i1, w0, w1 = linear_source(in_size, out_size, device)
    matrix = torch.zeros(out_size, in_size, device=device)
    rows = torch.arange(out_size, device=device)
    matrix.index_put_((rows, i0), w0, accumulate=True)
    matrix.index_put_((rows, i1), w1, accumulate=True)
    return matrix.to(dtype or torch.float32)


class SeparableStitch:
    """mmseg's slide-inference stitching of bilinear window maps as matrix
    products.

    A bilinear resize is separable and linear: window ``i``'s map resized
    to ``(h', w')`` pixels is ``R_y G_i R_x^T`` (:func:`linear_resize_matrix`
    per axis), and its crop placed at ``(y1, x1)`` keeps rows
    ``[0, y2 - y1)`` of ``R_y`` and ``[0, x2 - x1)`` of ``R_x``, shifted to
    the image's rows and columns. The stitched maps are the sum over windows
    divided by the number of windows covering each pixel. Windows of one row
    band (the same ``y1, y2``) share their row matrix, so their column
    products ``G_i R_x^T`` (C, h, W) are summed first; a band of output rows
    is then one product of the bands' row weights with those sums. Same
    numbers as resizing and adding window by window, up to float rounding
    (each output is the same few weighted terms, summed in another order),
    and a fraction of its memory traffic: no window is ever held at pixel
    size. The column sums of a row band are computed when a band of output
    rows first needs them and dropped once the requested rows are below
    the band, so rendering top to bottom holds those of the few row bands
    that overlap the current output rows (C x h x W each).

    Args:
        grids: (n, C, h, w) window maps.
        boxes: n windows ``(y1, y2, x1, x2)``.
        image_size: (H, W).
        window_size: (h', w') pixels each grid is resized to.
    """

    def __init__(self, grids: Tensor, boxes: Sequence[Window],
                 image_size: Tuple[int, int], window_size: Tuple[int, int]):
        self.grids = grids
        self.image_size = image_size
        height, width = image_size
        grid_h, grid_w = grids.shape[-2:]
        options = dict(dtype=grids.dtype, device=grids.device)
        row_weights = linear_resize_matrix(grid_h, window_size[0], **options)
        col_weights = linear_resize_matrix(grid_w, window_size[1], **options)
        self.bands: List[Tuple[int, int]] = sorted(
            {(y1, y2) for y1, y2, _, _ in boxes})
        self.members: List[List[Tuple[int, Tensor]]] = [
            [] for _ in self.bands]
        columns = {}
        for index, (y1, y2, x1, x2) in enumerate(boxes):
            if (x1, x2) not in columns:
                placed = grids.new_zeros((grid_w, width))
                placed[:, x1:x2] = col_weights[:x2 - x1].t()
                columns[x1, x2] = placed
            self.members[self.bands.index((y1, y2))].append(
                (index, columns[x1, x2]))
        self.row_weights = [row_weights[:y2 - y1] for y1, y2 in self.bands]
        ys = torch.arange(height, device=grids.device)
        xs = torch.arange(width, device=grids.device)
        inside_rows = torch.stack([(ys >= y1) & (ys < y2)
                                   for y1, y2, _, _ in boxes])
        inside_cols = torch.stack([(xs >= x1) & (xs < x2)
                                   for _, _, x1, x2 in boxes])
        # windows covering each pixel: small integers, exact in any float
        self.count = inside_rows.t().to(grids.dtype) @ \
            inside_cols.to(grids.dtype)
        self._sums = {}

    def _column_sums(self, band: int) -> Tensor:
        """(C, h, W): sum of ``G_i R_x^T`` over the windows of a row band."""
        if band not in self._sums:
            total = None
            for index, columns in self.members[band]:
                part = torch.matmul(self.grids[index], columns)
                total = part if total is None else total.add_(part)
            self._sums[band] = total
        return self._sums[band]

    def rows(self, start: int, stop: int) -> Tensor:
        """(1, C, stop - start, W) rows of the stitched maps."""
        for band in [b for b in self._sums if self.bands[b][1] <= start]:
            del self._sums[band]
        grid_h = self.grids.shape[-2]
        used = [b for b, (y1, y2) in enumerate(self.bands)
                if y1 < stop and y2 > start]
        weights = self.grids.new_zeros((stop - start, len(used) * grid_h))
        for slot, band in enumerate(used):
            y1, y2 = self.bands[band]
            top, bottom = max(start, y1), min(stop, y2)
            weights[top - start:bottom - start,
                    slot * grid_h:(slot + 1) * grid_h] = \
                self.row_weights[band][top - y1:bottom - y1]
        if not used:  # rows no window covers: 0 / 0, as the window sum
            zeros = self.grids.new_zeros((self.grids.shape[1], stop - start,
                                          self.image_size[1]))
            return zeros.div_(self.count[start:stop])[None]
        sums = [self._column_sums(band) for band in used]
        sums = sums[0] if len(sums) == 1 else torch.cat(sums, dim=1)
        out = torch.matmul(weights, sums)           # (C, rows, W)
        return out.div_(self.count[start:stop])[None]


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
        align_corners: mmseg's decode-head attribute, read by the
            segmentor's resizes; always False (``F.interpolate``'s
            ``align_corners=False``, as every reference code here).
        pixelwise_scores: :meth:`class_scores` computes each pixel's scores
            from that pixel's channels only (softmax over queries, 1 - max),
            so the segmentor may call it on bands of output rows and never
            hold full-size maps of every class (True). False: it needs the
            whole image (e.g. a per-class min-max over the image); the
            segmentor then renders full-size maps (memory grows with
            classes x pixels), as it does when PAMR is on.

    ``features.encode_image`` (crops -> projected CLS of the unmodified
    path) and ``vocab.encode_text`` (raw sentences -> L2-normalised
    embeddings) are always available.
    """
    required_attention_layers: LayerSpec = ()
    requires_cls_token: bool = False
    attention_heads: Union[None, str, int] = None
    window_resize_mode: str = 'bilinear'
    align_corners: bool = False
    pixelwise_scores: bool = True

    def num_output_maps(self, vocab: VocabularyEmbeddings) -> int:
        """Channels of the window maps; one per class by default."""
        return vocab.num_classes

    def forward(self, features: DenseCLIPFeatures,
                vocab: VocabularyEmbeddings) -> Tensor:
        """Return (B, num_output_maps, h, w) maps for B windows."""
        raise NotImplementedError

    def predict(self, inputs: Tuple[DenseCLIPFeatures, VocabularyEmbeddings],
                batch_img_metas: List[dict], test_cfg=None) -> Tensor:
        """mmseg's decode-head ``predict``: the (B, C, H, W) window maps of
        :meth:`forward` resized (``window_resize_mode``) to the pixels the
        features were computed on (``features.images``, padded to whole
        patches) and cropped to the input size of mmseg's
        ``BaseDecodeHead.predict_by_feat`` rule: ``img_shape`` when it is a
        ``torch.Size`` (set so by mmseg's slide inference), else
        ``pad_shape``, else ``img_shape``."""
        features, vocab = inputs
        maps = self.forward(features, vocab).float()
        covered = tuple(features.images.shape[-2:])
        meta = batch_img_metas[0]
        size = meta.get('img_shape')
        if not isinstance(size, torch.Size) and 'pad_shape' in meta:
            size = meta['pad_shape']
        if size is None:
            raise OVSSDataError(
                f'image meta without img_shape or pad_shape (keys: '
                f'{sorted(meta)}): the window maps are resized to it')
        height, width = (int(v) for v in tuple(size)[:2])
        if height > covered[0] or width > covered[1]:
            raise OVSSDataError(
                f'image meta size {height}x{width} is larger than the '
                f'{covered[0]}x{covered[1]} pixels the features cover; the '
                'metas must describe the inputs given to the backbone')
        return interpolate(maps, covered,
                           self.window_resize_mode)[..., :height, :width]

    def loss(self, inputs, batch_data_samples, train_cfg=None) -> dict:
        """mmseg's decode-head ``loss``: refused, the head is training-free."""
        raise OVSSConfigError(
            f'{type(self).__name__} is a training-free head: it has no loss '
            'and nothing to train. Evaluate with tools/test.py (no '
            'checkpoint needed), or train a model with a trainable decode '
            'head')

    def class_scores(self, maps: Tensor,
                     vocab: VocabularyEmbeddings) -> Tensor:
        """Map stitched maps (N, C, H, W) to per-class scores.

        The default treats the window maps as per-class scores already.
        """
        return maps

    def image_maps(self, maps: StitchedMaps, images: Tensor,
                   vocab: VocabularyEmbeddings,
                   encode_image: Callable[[Tensor], Tensor],
                   patch_size: int) -> Union[StitchedMaps, Tensor]:
        """Turn the stitched window maps of one image into the maps given
        to :meth:`class_scores`; identity here.

        ``maps`` renders the (1, C, H, W) stitched maps (``maps.render()``,
        or bands with ``maps.rows``); return :class:`StitchedMaps` (e.g.
        :meth:`StitchedMaps.from_grid`) or a (1, C', H, W) tensor.
        ``images`` is the (1, 3, H, W) normalised image, ``encode_image``
        maps crops to the projected CLS of the unmodified CLIP path and
        ``patch_size`` is the backbone's patch in pixels.
        """
        return maps

