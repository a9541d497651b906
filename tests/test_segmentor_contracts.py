"""CLIPDenseSegmentor keeps mmseg's EncoderDecoder contracts.

mmseg's own methods run on the same model are the reference:
``EncoderDecoder.slide_inference`` / ``whole_inference`` (which call the
segmentor's ``encode_decode`` window by window) against the batched
overrides, and ``BaseSegmentor.postprocess_result`` of ``inference``
against ``predict`` (padding, flips, resize to ``ori_shape``).
"""
import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_ovss  # noqa: F401
from mmseg_ovss.clip.dense_head import DenseCLIPHead
from mmseg_ovss.models.heads.cosine_head import CosineSimilarityHead
from mmseg_ovss.models.segmentors.tta import CLIPSegTTAModel
from mmseg_ovss.testing.direct import EPS32, assert_fp32_close
from mmseg_ovss.testing.labels import (assert_equal_where_decided,
                                       decided_pixels)
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

TINY = dict(model_name='ovss-tiny-ViT-16', random_init=True)
CLASSES = ['background', 'cat, kitten', 'dog', 'grass']  # 5 queries
QUERY_CLASS = [0, 1, 1, 2, 3]
TAU = 40.0
init_default_scope('mmseg')


@MODELS.register_module(force=True)
class NearestCosineHead(CosineSimilarityHead):
    """The cosine head with nearest-neighbour window resizing."""
    window_resize_mode = 'nearest'


def build(head='CosineSimilarityHead', **kwargs):
    torch.manual_seed(0)
    cfg = dict(
        type='CLIPDenseSegmentor', clip=TINY,
        backbone=dict(type='OpenCLIPViT', dense_strategy=dict(type='SCLIP')),
        text_encoder=dict(type='OpenCLIPTextEncoder', templates='single'),
        decode_head=dict(type=head, logit_scale=TAU), window_batch_size=3,
        test_cfg=dict(mode='slide', crop_size=(32, 32), stride=(16, 16)))
    cfg.update(kwargs)
    model = MODELS.build(cfg).eval()
    model.set_vocabulary(CLASSES)
    return model


def metas(batch, height, width, ori=None, **extra):
    """Fresh image metas (mmseg's slide inference writes into them)."""
    return [dict(ori_shape=ori or (height, width), img_shape=(height, width),
                 pad_shape=(height, width), padding_size=[0, 0, 0, 0],
                 **extra) for _ in range(batch)]


def samples(batch, height, width, ori=None, **extra):
    return [SegDataSample(metainfo=m)
            for m in metas(batch, height, width, ori, **extra)]


def batching_terms(crop):
    """fp32 reductions of one window's cosine maps, whose summation order
    changes when windows are encoded in batches (GEMM blocking): per block
    of the tiny ViT (width 64, 4 heads of 16, MLP 256) two layer norms
    (2 x 64), the q/k/v and output projections (2 x 64), q.k (16), the
    attention over the N tokens and the MLP (64 + 256); then ln_post and
    the projection (2 x 64), the normalised 32-d cosine (2 x 32) and a
    bilinear resize (a few roundings, 16)."""
    tokens = 1 + (-(-crop[0] // 16)) * (-(-crop[1] // 16))
    return 6 * (2 * 64 + 2 * 64 + 16 + tokens + 64 + 256) + 128 + 64 + 16


SLIDE_CASES = {
    # image (h, w), crop, stride
    'overlapping windows': ((40, 56), (32, 32), (16, 16)),
    'image smaller than the crop': ((20, 24), (32, 32), (16, 16)),
    'crop not a multiple of the patch': ((50, 70), (24, 40), (16, 24)),
    'stride of the crop, border snapped': ((48, 48), (32, 32), (32, 32)),
}


@pytest.mark.parametrize('head', ['CosineSimilarityHead',
                                  'NearestCosineHead'])
@pytest.mark.parametrize('case', SLIDE_CASES, ids=list(SLIDE_CASES))
@torch.no_grad()
def test_slide_inference_equals_mmseg_slide_inference(case, head):
    (height, width), crop, stride = SLIDE_CASES[case]
    model = build(head, test_cfg=dict(mode='slide', crop_size=crop,
                                      stride=stride))
    inputs = torch.randn(2, 3, height, width)
    ours = model.slide_inference(inputs, metas(2, height, width))
    theirs = EncoderDecoder.slide_inference(model, inputs,
                                            metas(2, height, width))
    assert ours.shape == (2, model.out_channels, height, width) == \
        theirs.shape
    assert_fp32_close(ours, theirs, batching_terms(crop))


@torch.no_grad()
def test_whole_inference_equals_mmseg_whole_inference():
    model = build(test_cfg=dict(mode='whole'), window_batch_size=1)
    inputs = torch.randn(2, 3, 40, 56)  # padded to 48 x 64 for the ViT
    ours = model.whole_inference(inputs, metas(2, 40, 56))
    theirs = EncoderDecoder.whole_inference(model, inputs, metas(2, 40, 56))
    assert ours.shape == theirs.shape == (2, 5, 40, 56)
    assert_fp32_close(ours, theirs, batching_terms((48, 64)))


@torch.no_grad()
def test_encode_decode_is_the_window_map_at_input_size():
    """Backbone features of the whole (patch-padded) inputs, the cosines
    of the head written out, bilinearly resized to the padded pixels and
    cropped to the input (mmseg's predict_by_feat size rule)."""
    model = build()
    inputs = torch.randn(2, 3, 40, 56)
    features = model.backbone.forward_dense(F.pad(inputs, (0, 8, 0, 8)))
    patches = F.normalize(features.patch_tokens, dim=1)
    text = model.vocabulary_embeddings().query_embeddings
    cosines = torch.einsum('bdhw,qd->bqhw', patches, text)
    expected = F.interpolate(cosines, size=(48, 64), mode='bilinear',
                             align_corners=False)[..., :40, :56]
    got = model.encode_decode(inputs, metas(2, 40, 56))
    assert_fp32_close(got, expected, 2 * 32 + 16)
    # slide inference marks a window by a torch.Size img_shape: its size
    # wins over pad_shape
    window = metas(2, 40, 56)
    window[0]['img_shape'] = torch.Size((40, 56))
    window[0]['pad_shape'] = (48, 64)
    assert model.encode_decode(inputs, window).shape[-2:] == (40, 56)
    # tensor mode: the head's maps on the patch grid
    grid = model(inputs, mode='tensor')
    assert_fp32_close(grid, cosines, 2 * 32)
    too_large = metas(2, 60, 56)
    with pytest.raises(OVSSDataError, match='60x56 is larger than the '
                       '48x64 pixels'):
        model.encode_decode(inputs, too_large)


@torch.no_grad()
def test_inference_returns_class_scores():
    """mmseg's slide maps through the cosine head's scoring, by hand:
    softmax over the queries of tau * cos, max over each class's
    synonyms."""
    (height, width), crop, stride = SLIDE_CASES['overlapping windows']
    model = build()
    inputs = torch.randn(2, 3, height, width)
    maps = EncoderDecoder.slide_inference(model, inputs,
                                          metas(2, height, width))
    probs = (TAU * maps).softmax(1)
    expected = torch.stack([probs[:, [q for q, c in enumerate(QUERY_CLASS)
                                      if c == k]].amax(1)
                            for k in range(len(CLASSES))], 1)
    got = model.inference(inputs, metas(2, height, width))
    assert got.shape == (2, model.num_classes, height, width)
    # d in a cosine moves a softmax probability by at most 2 tau d
    torch.testing.assert_close(
        got, expected, rtol=0,
        atol=2 * TAU * batching_terms(crop) * EPS32)


def test_segmentor_is_an_mmseg_encoder_decoder():
    model = build()
    assert isinstance(model, EncoderDecoder)
    assert model.with_decode_head and not model.with_neck
    assert not model.with_auxiliary_head
    assert model.align_corners is False
    # the active vocabulary: 4 classes, 5 queries (one per synonym)
    assert (model.num_classes, model.out_channels) == (4, 5)
    model.set_vocabulary(['sky', 'road', 'tree'])
    assert (model.num_classes, model.out_channels) == (3, 3)
    # mmseg's code reads test_cfg attributes
    assert model.test_cfg.mode == 'slide'
    assert model.test_cfg.crop_size == (32, 32)
    with pytest.raises(OVSSConfigError, match='test_cfg.stride is required'):
        build(test_cfg=dict(mode='slide', crop_size=32))
    with pytest.raises(OVSSConfigError, match='training-free head'):
        model.decode_head.loss(None, [], None)


def assert_labels_except_ties(labels, scores, expected, tol):
    """Equal labels where the best two expected scores are > 2 tol apart."""
    assert_equal_where_decided(labels, expected,
                               decided_pixels(scores, 2 * tol),
                               min_fraction=0.95)


FLIPS = [None, 'horizontal', 'vertical']


@pytest.mark.parametrize('tile_mb', [256.0, 0.004], ids=['whole', 'bands'])
@torch.no_grad()
def test_predict_equals_mmseg_postprocess_of_inference(tile_mb):
    """Without background rules and at the input size, predict's labels
    are the argmax of mmseg's postprocess_result(inference(...)), flips
    undone (mmseg handles horizontal and vertical)."""
    model = build(tile_mb=tile_mb, window_batch_size=1)
    inputs = torch.randn(3, 3, 40, 56)
    flips = [dict(flip=d is not None, flip_direction=d) for d in FLIPS]
    ours = model.predict(inputs, [SegDataSample(metainfo=dict(m, **f))
                                  for m, f in zip(metas(3, 40, 56), flips)])
    reference = [SegDataSample(metainfo=dict(m, **f))
                 for m, f in zip(metas(3, 40, 56), flips)]
    theirs = EncoderDecoder.postprocess_result(
        model, model.inference(inputs, metas(3, 40, 56)), reference)
    # one window per forward either way: the bands combine the same values
    # with the same weights, possibly rounded in another order (a few fp32
    # roundings of cosines <= 1), which the softmax of tau * cos turns
    # into at most 2 tau times as much
    tol = 8 * TAU * EPS32
    for mine, ref in zip(ours, theirs):
        torch.testing.assert_close(mine.seg_logits.data, ref.seg_logits.data,
                                   rtol=0, atol=tol)
        assert_labels_except_ties(mine.pred_sem_seg.data[0],
                                  ref.seg_logits.data,
                                  ref.pred_sem_seg.data[0], tol)


@pytest.mark.parametrize('direction', ['horizontal', 'vertical', 'diagonal'])
@torch.no_grad()
def test_flipped_input_gives_the_flipped_back_result(direction):
    """A view flipped by the pipeline comes back unflipped: exactly the
    unflipped-meta result of the same input, mirrored, after the resize to
    ori_shape, in bands (vertical: the bands land mirrored), with the
    background rules and a subsampled seg_logits store."""
    model = build(tile_mb=0.004, prob_thd=0.3, area_thd=0.1)
    inputs = torch.randn(1, 3, 40, 56)
    axes = {'horizontal': (-1, ), 'vertical': (-2, ),
            'diagonal': (-2, -1)}[direction]
    plain = model.predict(inputs, samples(1, 40, 56, ori=(61, 83)))[0]
    flipped = model.predict(inputs, samples(
        1, 40, 56, ori=(61, 83), flip=True, flip_direction=direction))[0]
    assert torch.equal(flipped.pred_sem_seg.data,
                       plain.pred_sem_seg.data.flip(axes))
    assert torch.equal(flipped.seg_logits.data,
                       plain.seg_logits.data.flip(axes))
    # subsampled scores: every 3rd pixel of the flipped-back full scores
    model.seg_logits_max_mb = 4 * 4 * 21 * 28 / 2**20
    with pytest.warns(UserWarning, match='every 3-th pixel'):
        small = model.predict(inputs, samples(
            1, 40, 56, ori=(61, 83), flip=True, flip_direction=direction))[0]
    assert small.seg_logits.metainfo['stride'] == 3
    assert torch.equal(small.seg_logits.data,
                       flipped.seg_logits.data[:, ::3, ::3])
    with pytest.raises(OVSSDataError, match="flip_direction='sideways'"):
        model.predict(inputs, samples(1, 40, 56, flip=True,
                                      flip_direction='sideways'))


@torch.no_grad()
def test_padding_size_is_removed_before_inference():
    """An image padded on every side (padding_size = left, right, top,
    bottom) is segmented as the image alone."""
    model = build()
    image = torch.randn(1, 3, 36, 44)
    padded = F.pad(image, (5, 3, 7, 2), value=9.0)
    alone = model.predict(image, samples(1, 36, 44, ori=(50, 60)))[0]
    meta = metas(1, 36, 44, ori=(50, 60))[0]
    meta.update(pad_shape=(45, 52), padding_size=[5, 3, 7, 2])
    got = model.predict(padded, [SegDataSample(metainfo=meta)])[0]
    assert torch.equal(got.pred_sem_seg.data, alone.pred_sem_seg.data)
    assert torch.equal(got.seg_logits.data, alone.seg_logits.data)


@torch.no_grad()
def test_tta_merge_averages_view_scores_then_thresholds():
    """CLIPSegTTAModel: the mean of the views' stored scores (area rule
    applied per view), then prob_thd -> background on the mean; the
    unflipped view's metainfo and ground truth; renormalised scores (as
    NACLIP stores them) only in what is stored."""
    model = build(prob_thd=0.3, area_thd=0.1,
                  seg_logits=dict(renormalize=True))
    tta = CLIPSegTTAModel(module=model)
    inputs = torch.randn(1, 3, 40, 56)
    truth = torch.randint(0, 4, (1, 40, 56))
    outs = []
    model.seg_logits_renormalize = False  # as CLIPSegTTAModel.test_step
    for flip in (False, True):
        view = samples(1, 40, 56, flip=flip, flip_direction='horizontal',
                       img_path='x.jpg', reduce_zero_label=True)[0]
        view.gt_sem_seg = PixelData(data=truth.flip(-1) if flip else truth)
        outs.append(model.predict(inputs.flip(-1) if flip else inputs,
                                  [view])[0])
    model.seg_logits_renormalize = True
    (merged, ) = tta.merge_preds([outs])
    mean = (outs[0].seg_logits.data + outs[1].seg_logits.data) / 2
    best, expected = mean.max(0)
    expected[best < 0.3] = 0  # class 0 is the background
    assert (best < 0.3).any() and (best >= 0.3).any()
    assert torch.equal(merged.pred_sem_seg.data[0], expected)
    torch.testing.assert_close(merged.seg_logits.data,
                               mean / mean.sum(0, keepdim=True))
    assert 'flip' not in merged.metainfo
    assert merged.reduce_zero_label and merged.img_path == 'x.jpg'
    assert torch.equal(merged.gt_sem_seg.data, truth)


class PlainHead(DenseCLIPHead):
    """A head with the base class's defaults only."""

    def forward(self, features, vocab):
        b, _, h, w = features.patch_tokens.shape
        return features.patch_tokens.new_ones(b, vocab.num_classes, h, w)


def test_align_corners_true_is_refused():
    class CornerHead(PlainHead):
        align_corners = True
    MODELS.register_module(module=CornerHead, force=True)
    with pytest.raises(OVSSConfigError, match='align_corners=True'):
        build(decode_head=dict(type='CornerHead'))
