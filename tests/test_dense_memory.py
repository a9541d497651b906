"""Class scores in bands of output rows: the labels and scores of a direct
full-size computation, without full-size maps of every class."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import mmseg_ovss  # noqa: F401
from mmseg_ovss.clip.dense_head import StitchedMaps, resize_rows
from mmseg_ovss.models.heads.cosine_head import CosineSimilarityHead
from mmseg_ovss.models.segmentors.clip_segmentor import slide_windows
from mmseg_ovss.utils.errors import OVSSConfigError

TINY = dict(model_name='ovss-tiny-ViT-16', random_init=True)
EPS = torch.finfo(torch.float32).eps
CLASSES = ['cat, kitten', 'dog', 'grass', 'car', 'tree, bush', 'sky',
           'road']
SLIDE = dict(mode='slide', crop_size=(32, 48), stride=(16, 16))
HEADS = {
    'cosine': dict(type='CosineSimilarityHead', logit_scale=40.0),
    'freecp': dict(type='FreeCPHead', descriptions=None, ap_text='templates',
                   crop_size=32, rp_threshold=0.05, ap_threshold=0.2,
                   logit_scale=100.0),
    'freecp_image': dict(type='FreeCPHead', descriptions=None,
                         ap_text='templates', crop_size=32,
                         rp_threshold=0.05, ap_threshold=0.2,
                         logit_scale=100.0, purification_scope='image'),
}
init_default_scope('mmseg')


def build(head='cosine', background=True, tile_mb=0.004, test_cfg=SLIDE,
          classes=CLASSES, **kwargs):
    """Tiny random SCLIP; ``tile_mb=0.004`` makes bands of a few rows."""
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='CLIPDenseSegmentor', clip=TINY,
        backbone=dict(type='OpenCLIPViT', dense_strategy=dict(type='SCLIP')),
        text_encoder=dict(type='OpenCLIPTextEncoder', templates='single'),
        decode_head=HEADS[head] if isinstance(head, str) else head,
        window_batch_size=1, tile_mb=tile_mb, test_cfg=test_cfg,
        **kwargs)).eval()
    model.set_vocabulary((['background'] if background else []) +
                         list(classes))
    return model


def direct(model, image, out_shape):
    """The full-size computation written out: every window's map resized
    to its pixels (one window at a time, as the model with
    window_batch_size=1), stitched with mmseg's rule, resized to
    ``out_shape``, PAMR, the head's class scores, SCLIP's area and
    probability rules. Returns (labels, scores after the area rule)."""
    head, vocab = model.decode_head, model.vocabulary_embeddings()
    height, width = image.shape[-2:]
    cfg = model.test_cfg
    windows = [(0, height, 0, width)] if cfg['mode'] == 'whole' else \
        slide_windows(height, width, cfg['crop_size'], cfg['stride'])
    total = count = None
    for y1, y2, x1, x2 in windows:
        crop = image[..., y1:y2, x1:x2]
        pad_h, pad_w = -crop.shape[-2] % 16, -crop.shape[-1] % 16
        feats = model._backbone_features(F.pad(crop, (0, pad_w, 0, pad_h)))
        grid = head(feats, vocab).float()
        mode = head.window_resize_mode
        up = F.interpolate(grid, size=(crop.shape[-2] + pad_h,
                                       crop.shape[-1] + pad_w), mode=mode,
                           align_corners=False if mode == 'bilinear' else None)
        if total is None:
            total = up.new_zeros(1, up.shape[1], height, width)
            count = up.new_zeros(1, 1, height, width)
        total[..., y1:y2, x1:x2] += up[..., :y2 - y1, :x2 - x1]
        count[..., y1:y2, x1:x2] += 1
    maps = head.image_maps(total / count, image, vocab,
                           model.backbone.encode_cls, 16)
    maps = F.interpolate(maps, size=out_shape, mode='bilinear',
                         align_corners=False)
    if model.pamr is not None:
        maps = model.pamr(image, maps)
    scores = head.class_scores(maps, vocab)[0]
    background, k = vocab.background_class, scores.shape[0]
    if model.area_thd is not None:
        area = torch.bincount(scores.argmax(0).flatten(), minlength=k)
        foreground = torch.tensor([c != background for c in range(k)])
        keep = (area > model.area_thd * area[foreground].sum()) | ~foreground
        scores = scores * keep.float()[:, None, None]
    best, labels = scores.max(0)
    if background is not None and model.prob_thd > 0:
        labels[best < model.prob_thd] = background
    return labels, scores


def tolerance(model):
    """Banded rows combine the same source values with the same weights as
    F.interpolate, possibly rounded in another order: a few float32
    roundings of maps of magnitude <= 1 (cosines, FreeCP maps); the cosine
    head's softmax of tau * cos turns an error d into a relative 2 tau d."""
    head = model.decode_head
    tau = head.logit_scale if isinstance(head, CosineSimilarityHead) else 1
    return 8 * EPS * max(1.0, float(tau))


def assert_same_labels(model, labels, want, scores, tol):
    """Equal labels, except where the direct scores tie within ``tol``
    (top two classes, or the best score and prob_thd)."""
    differ = labels != want
    if not differ.any():
        return
    top = scores.topk(2, dim=0).values if scores.shape[0] > 1 else \
        torch.cat([scores, scores - 1])
    tie = (top[0] - top[1]) <= 2 * tol
    if model.prob_thd > 0:
        tie |= (top[0] - model.prob_thd).abs() <= tol
    assert tie[differ].all(), int((differ & ~tie).sum())
    assert differ.float().mean() < 1e-3


CASES = [
    ('cosine', SLIDE, dict(background=False)),
    ('cosine', SLIDE, dict(prob_thd=0.2)),
    ('cosine', dict(mode='whole'), dict(area_thd=0.2)),
    ('cosine', SLIDE, dict(area_thd=0.2, prob_thd=0.15)),
    # one band: the area pass's scores are reused for the labels
    ('cosine', SLIDE, dict(area_thd=0.2, tile_mb=64.0)),
    ('cosine', SLIDE, dict(pamr=dict(num_iter=2, dilations=(1, 2)))),
    ('freecp', SLIDE, dict()),
    ('freecp', dict(mode='whole'), dict(background=False)),
    ('freecp', SLIDE, dict(area_thd=0.2, prob_thd=0.3)),
    ('freecp_image', SLIDE, dict()),
    ('freecp_image', dict(mode='whole'), dict()),
]


@pytest.mark.parametrize('out_shape', [(56, 72), (45, 95)],
                         ids=['same_size', 'resized'])
@pytest.mark.parametrize('head,test_cfg,options', CASES,
                         ids=lambda v: v if isinstance(v, str) else None)
@torch.no_grad()
def test_banded_scores_equal_the_full_size_computation(head, test_cfg,
                                                       options, out_shape):
    model = build(head, test_cfg=test_cfg, seg_logits=dict(max_mb=None),
                  **options)
    torch.manual_seed(3)
    image = torch.randn(1, 3, 56, 72)      # 56 rows: not whole patches
    sample = model.predict(image, None)[0] if out_shape == (56, 72) else \
        model.predict(image, [_sample(56, 72, out_shape)])[0]
    want_labels, want_scores = direct(model, image, out_shape)
    tol = tolerance(model)
    got = sample.seg_logits.data
    assert got.shape == want_scores.shape
    torch.testing.assert_close(got, want_scores, atol=tol, rtol=0)
    assert_same_labels(model, sample.pred_sem_seg.data[0], want_labels,
                       want_scores, tol)


def _sample(height, width, ori):
    from mmseg.structures import SegDataSample
    return SegDataSample(metainfo=dict(
        ori_shape=ori, img_shape=(height, width), pad_shape=(height, width),
        padding_size=[0, 0, 0, 0]))


@torch.no_grad()
def test_bands_give_the_numbers_of_one_band():
    """On an image of its own size many bands give the numbers of one band
    (the resize of a window's rows reads the same grid values with the
    same weights; torch may pick another kernel for a partial resize, so
    the bound is the rounding of :func:`tolerance`, and labels may differ
    only at ties within it)."""
    torch.manual_seed(4)
    image = torch.randn(1, 3, 50, 70)
    model = build(tile_mb=64.0, seg_logits=dict(max_mb=None))
    one = model.predict(image)[0]
    many = build(seg_logits=dict(max_mb=None)).predict(image)[0]
    tol = tolerance(model)
    torch.testing.assert_close(many.seg_logits.data, one.seg_logits.data,
                               atol=tol, rtol=0)
    assert_same_labels(model, many.pred_sem_seg.data[0],
                       one.pred_sem_seg.data[0], one.seg_logits.data, tol)


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.largest = max(self.largest, leaf.numel())
        return out


@pytest.mark.parametrize('head', ['cosine', 'freecp'])
@torch.no_grad()
def test_no_full_size_map_of_every_class(head):
    """100 classes on 128 x 192 pixels: no tensor reaches a quarter of
    the (K, H, W) class maps (the largest: a window's rows around a band,
    three grid rows here); with PAMR (whole image at once) one does."""
    names = [f'thing {i}' for i in range(100)]
    image = torch.randn(1, 3, 128, 192)
    full = 101 * 128 * 192
    windows = dict(mode='slide', crop_size=(96, 64), stride=(64, 64))
    model = build(head, classes=names, seg_logits=dict(max_mb=0),
                  test_cfg=windows)
    probe = LargestOutput()
    with probe:
        sample = model.predict(image)[0]
    assert sample.pred_sem_seg.data.shape == (1, 128, 192)
    assert 'seg_logits' not in sample           # max_mb=0: none stored
    assert probe.largest < full / 4, probe.largest
    whole = build(head, classes=names, seg_logits=dict(max_mb=0),
                  test_cfg=windows, pamr=dict(num_iter=1, dilations=(1, )))
    probe = LargestOutput()
    with probe:
        whole.predict(image)
    assert probe.largest >= full


@torch.no_grad()
def test_seg_logits_over_budget_keep_every_sth_pixel():
    torch.manual_seed(5)
    image = torch.randn(1, 3, 56, 72)
    model = build(seg_logits=dict(max_mb=None))
    full = model.predict(image)[0]
    # 8 classes x 56 x 72 x 4 bytes = 126 KiB; 40 KiB fit every 2nd pixel
    small = build(seg_logits=dict(max_mb=40 / 1024))
    with pytest.warns(UserWarning, match='every 2-th pixel'):
        sub = small.predict(image)[0]
    assert sub.seg_logits.stride == 2
    assert tuple(sub.seg_logits.ori_shape) == (56, 72)
    tol = tolerance(model)
    assert_same_labels(model, sub.pred_sem_seg.data[0],
                       full.pred_sem_seg.data[0], full.seg_logits.data, tol)
    torch.testing.assert_close(sub.seg_logits.data,
                               full.seg_logits.data[:, ::2, ::2],
                               atol=tol, rtol=0)
    # a budget under one pixel's scores keeps one pixel, with the warning
    tiny = build(seg_logits=dict(max_mb=1e-6))
    with pytest.warns(UserWarning, match='every 72-th pixel'):
        one = tiny.predict(image)[0]
    assert one.seg_logits.data.shape == (8, 1, 1)
    # the default (512 MiB) keeps this image's scores whole
    assert build().predict(image)[0].seg_logits.data.shape == (8, 56, 72)
    with pytest.raises(OVSSConfigError, match='max_mb'):
        build(seg_logits=dict(max_mb=-1))
    with pytest.raises(OVSSConfigError, match='unknown seg_logits'):
        build(seg_logits=dict(budget=1))
    with pytest.raises(OVSSConfigError, match='tile_mb'):
        build(tile_mb=0)


@torch.no_grad()
def test_stored_scores_follow_sclip_and_naclip():
    """SCLIP's code stores its scores after the area rule (the dropped
    classes zeroed, wangf3014/SCLIP clip_segmentor.py); NACLIP's divides
    them by their sum over classes (sinahmr/NACLIP naclip.py)."""
    torch.manual_seed(6)
    image = torch.randn(1, 3, 56, 72)
    plain = build(seg_logits=dict(max_mb=None)).predict(image)[0]
    area = build(area_thd=0.3, seg_logits=dict(max_mb=None)).predict(
        image)[0]
    labels = plain.pred_sem_seg.data
    counts = torch.bincount(labels.flatten(), minlength=8)
    dropped = (counts <= 0.3 * counts[1:].sum())
    dropped[0] = False                                  # background stays
    assert dropped.any() and not dropped[1:].all()
    stored = area.seg_logits.data
    assert torch.all(stored[dropped] == 0)
    assert torch.equal(stored[~dropped], plain.seg_logits.data[~dropped])
    assert not torch.isin(area.pred_sem_seg.data,
                          torch.nonzero(dropped).flatten()).any()
    renorm = build(seg_logits=dict(max_mb=None, renormalize=True)).predict(
        image)[0]
    # synonyms: the class maxima of a softmax over queries do not sum to 1
    sums = plain.seg_logits.data.sum(0)
    assert (sums < 1 - 1e-3).any()
    # dividing 8 scores by their sum: a few float32 roundings of values <= 1
    torch.testing.assert_close(renorm.seg_logits.data.sum(0),
                               torch.ones_like(sums), atol=16 * EPS, rtol=0)
    torch.testing.assert_close(renorm.seg_logits.data,
                               plain.seg_logits.data / sums,
                               atol=4 * EPS, rtol=0)
    assert torch.equal(renorm.pred_sem_seg.data, labels)


class ImageMinMaxHead(CosineSimilarityHead):
    """Scores that look at the whole image: per-class min-max over it."""
    pixelwise_scores = False

    def class_scores(self, maps, vocab):
        scores = super().class_scores(maps, vocab)
        low = scores.amin((2, 3), keepdim=True)
        high = scores.amax((2, 3), keepdim=True)
        return (scores - low) / (high - low)


@torch.no_grad()
def test_heads_with_image_wide_scores_get_the_whole_image():
    MODELS.register_module(module=ImageMinMaxHead, force=True)
    torch.manual_seed(7)
    image = torch.randn(1, 3, 56, 72)
    model = build(dict(type='ImageMinMaxHead'), seg_logits=dict(max_mb=None))
    sample = model.predict(image)[0]
    want_labels, want_scores = direct(model, image, (56, 72))
    scores = sample.seg_logits.data
    # the stitching sums the same terms in another order (SeparableStitch);
    # the min-max rescale divides by a range of order 1: a few roundings
    tol = tolerance(model)
    torch.testing.assert_close(scores, want_scores, atol=tol, rtol=0)
    assert_same_labels(model, sample.pred_sem_seg.data[0], want_labels,
                       want_scores, tol)
    assert torch.equal(scores.amax((1, 2)), torch.ones(8))  # image-wide


def test_window_rows_equal_slices_of_the_full_resize():
    """Rows of a window resized from its patch grid read only the grid rows
    they need. 16-pixel patches: the same source indices and weights as the
    full resize (the results can differ by the rounding of the kernel
    path torch picks for small tensors: at most 16 taps of |weight| <= 1.6
    -> 16 * eps * max|grid|); 14-pixel patches (1/14 is not a float) also
    round the source index: 64 * eps * max|grid|."""
    torch.manual_seed(8)
    grid = torch.randn(1, 5, 7, 9)
    bound = float(grid.abs().max()) * EPS
    for mode in ('bilinear', 'nearest-exact', 'bicubic', 'nearest'):
        full = F.interpolate(grid, size=(112, 144), mode=mode,
                             align_corners=False if mode in (
                                 'bilinear', 'bicubic') else None)
        for start in range(0, 112, 5):
            for stop in (start + 1, start + 9, min(start + 40, 112)):
                rows = resize_rows(grid, (112, 144), start, stop, mode)
                torch.testing.assert_close(rows, full[..., start:stop, :],
                                           atol=16 * bound, rtol=0)
    full = F.interpolate(grid, size=(98, 126), mode='bilinear',
                         align_corners=False)
    rows = resize_rows(grid, (98, 126), 30, 60, 'bilinear')
    torch.testing.assert_close(rows, full[..., 30:60, :], rtol=0,
                               atol=64 * bound)


def test_stitched_maps_pool_and_check_their_windows():
    torch.manual_seed(9)
    grids = torch.rand(2, 3, 2, 3)
    maps = StitchedMaps(grids, [(0, 32, 0, 48), (8, 40, 0, 48)], (40, 48),
                        (32, 48), 'bilinear')
    full = maps.render()
    pad = F.pad(full, (0, 0, 0, 8), mode='replicate')
    torch.testing.assert_close(maps.pooled(16, budget_bytes=1),
                               F.avg_pool2d(pad, 16), atol=0, rtol=0)
    with pytest.raises(OVSSConfigError, match='larger than'):
        StitchedMaps(grids, [(0, 40, 0, 48), (0, 32, 0, 48)], (40, 48),
                     (32, 48))
    with pytest.raises(OVSSConfigError, match='2 window maps for 1'):
        StitchedMaps(grids, [(0, 32, 0, 48)], (40, 48), (32, 48))


def window_by_window(grids, boxes, image_size, window_size):
    """mmseg's slide stitching written out: every window's map resized to
    its pixels, cropped, added where it sits, divided by the count."""
    total = grids.new_zeros((1, grids.shape[1], *image_size))
    count = grids.new_zeros((1, 1, *image_size))
    for grid, (y1, y2, x1, x2) in zip(grids, boxes):
        up = F.interpolate(grid[None], size=window_size, mode='bilinear',
                           align_corners=False)
        total[..., y1:y2, x1:x2] += up[..., :y2 - y1, :x2 - x1]
        count[..., y1:y2, x1:x2] += 1
    return total / count


@pytest.mark.parametrize('patch', [16, 14])
def test_separable_stitching_equals_window_by_window(patch):
    """Bilinear window maps stitched as matrix products: the numbers of
    resizing and adding each window, on mmseg's slide grid (windows
    clipped at the border) and on windows of unequal row bands, for any
    band of rows. Each output is a weighted sum of at most 4 grid values
    per window (weights in [0, 1], summing to 1) over at most n windows,
    then divided: (4 + n + 1) roundings of values <= max|grid|."""
    torch.manual_seed(10)
    grid_h, grid_w = 6, 4
    window = (grid_h * patch, grid_w * patch)
    height, width = 2 * window[0] - 5, 3 * window[1] - 7
    layouts = [
        slide_windows(height, width, window, (window[0] // 2,
                                              window[1] // 3)),
        [(0, window[0], 0, window[1]), (3, window[0] + 3, 5, window[1]),
         (height - window[0], height, width - window[1], width),
         (0, window[0] - 9, width - window[1] + 2, width)],
    ]
    for boxes in layouts:
        grids = torch.randn(len(boxes), 5, grid_h, grid_w)
        maps = StitchedMaps(grids, boxes, (height, width), window)
        want = window_by_window(grids, boxes, (height, width), window)
        covered = torch.isfinite(want)
        bound = (5 + len(boxes)) * EPS * float(grids.abs().max())
        got = maps.render()
        assert torch.equal(torch.isfinite(got), covered)
        torch.testing.assert_close(got[covered], want[covered], rtol=0,
                                   atol=bound)
        for start, stop in [(0, 1), (7, 40), (window[0] - 1, height),
                            (height - 3, height)]:
            part = maps.rows(start, stop)
            torch.testing.assert_close(
                part.nan_to_num(), want[..., start:stop, :].nan_to_num(),
                rtol=0, atol=bound)
