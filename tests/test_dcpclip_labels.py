"""Labels from the selected classes only (``compact_argmax``,
``CostVolumeSegmentor.predict``) against the full-vocabulary path: the
scores scattered to all C classes (the unselected at a constant), resized,
argmax."""
import pytest
import torch
import torch.nn.functional as F
from mmseg.structures import SegDataSample

from mmseg_ovss.datasets.large_vocabularies import ADE847_CLASSES
from mmseg_ovss.models.catseg.compact_labels import compact_argmax
from mmseg_ovss.models.dcpclip.category_selection import (
    CategorySelection, scatter_classes)
from test_dcpclip_head import build, head_cfg  # the tiny DCP-CLIP

EPS = torch.finfo(torch.float32).eps


def full_labels(scores, selection, num_classes, fill):
    """The direct computation: scatter, argmax over all C classes."""
    return scatter_classes(scores, selection, num_classes,
                           fill).argmax(dim=1)


def compact(scores, selection, fill):
    fill_map = scores.new_full((scores.shape[0], 1, *scores.shape[2:]),
                               fill)
    return compact_argmax(scores, selection.index, selection.valid,
                          selection.mask, fill_map)


def test_ties_and_pixels_below_the_unselected_score():
    """Hand-made scores: ties among selected classes, a selected class tied
    with the unselected constant before and after the lowest unselected
    class, every selected score below the constant, a padding slot."""
    fill = 0.25
    mask = torch.tensor([[False, True, False, True, True, False],
                         [True, False, True, False, False, False]])
    selection = CategorySelection.from_mask(mask)
    assert not selection.valid[1, 2]  # image 1 has a padding slot
    # pixels of image 0 (classes 1, 3, 4; lowest unselected 0):
    # tie 3 = 4 above fill; all below; tie with fill (0 < 1 wins);
    # 1 the maximum
    s0 = torch.tensor([[0.1, 0.1, 0.25, 0.9],
                       [0.7, 0.2, 0.1, 0.3],
                       [0.7, 0.2, 0.1, 0.3]])
    # image 1 (classes 0, 2; lowest unselected 1): 0 tied with fill (0
    # wins); 2 tied with fill (1 wins); all below (1); 0 = 2 tie above
    s1 = torch.tensor([[0.25, 0.1, 0.2, 0.6],
                       [0.1, 0.25, 0.2, 0.6],
                       [9.0, 9.0, 9.0, 9.0]])  # the padding slot
    scores = torch.stack([s0, s1]).view(2, 3, 1, 4)
    want = full_labels(scores, selection, 6, fill)
    assert want.tolist() == [[[3, 0, 0, 1]], [[0, 1, 1, 0]]]
    assert torch.equal(compact(scores, selection, fill), want)
    # every class selected: no unselected map
    everything = CategorySelection.everything(1, 3)
    some = torch.tensor([0.5, 0.5, 0.1]).view(1, 3, 1, 1)
    got = compact_argmax(some, everything.index, everything.valid,
                         everything.mask, None)
    assert got.item() == 0 == some.argmax(dim=1).item()


def test_random_scores_with_many_ties_after_a_resize():
    """Coarse scores (many exact ties with the constant) resized with the
    unselected map: the labels of scatter + resize + argmax."""
    torch.manual_seed(0)
    fill = 0.5
    mask = torch.rand(3, 40) < 0.2
    mask[:, 7] = True
    selection = CategorySelection.from_mask(mask)
    scores = torch.randint(0, 5, (3, selection.width, 6, 7)).float() / 8
    full = scatter_classes(scores, selection, 40, fill)
    want = F.interpolate(full, (13, 11), mode='bilinear',
                         align_corners=False).argmax(dim=1)
    fill_map = scores.new_full((3, 1, 6, 7), fill)
    resized = F.interpolate(torch.cat([fill_map, scores], 1), (13, 11),
                            mode='bilinear', align_corners=False)
    got = compact_argmax(resized[:, 1:], selection.index, selection.valid,
                         selection.mask, resized[:, :1])
    assert torch.equal(got, want)


def sample_of(shape, pad=(0, 0, 0, 0), flip=False):
    sample = SegDataSample()
    height, width = shape
    sample.set_metainfo(dict(
        img_shape=shape, ori_shape=(height + 3, width - 2),
        pad_shape=(height + pad[3], width + pad[1]), padding_size=list(pad),
        flip=flip, flip_direction='horizontal'))
    return sample


def old_path(model, inputs, samples):
    """Full scores (B, C, H, W) through mmseg's crop, flip, resize and
    argmax."""
    metas = [s.metainfo for s in samples]
    fresh = [SegDataSample(metainfo=s.metainfo) for s in samples]
    return model.postprocess_result(model.inference(inputs, metas), fresh)


@pytest.mark.parametrize('mode', ['whole', 'catseg_ensemble'])
def test_model_labels_equal_the_full_scatter_path(mode):
    test_cfg = dict(mode=mode)
    if mode == 'catseg_ensemble':
        test_cfg.update(kernel=32, overlap=0.5, ensemble_size=(48, 48))
    model = build(test_cfg=test_cfg, seg_logits=dict(max_mb=None))
    model.eval()
    torch.manual_seed(3)
    image = torch.randn(2, 3, 40, 44)
    inputs = F.pad(image, (0, 4, 0, 8))
    samples = [sample_of((40, 44), (0, 4, 0, 8)),
               sample_of((40, 44), (0, 4, 0, 8), flip=True)]
    with torch.no_grad():
        want = old_path(model, inputs, samples)
        got = model.predict(inputs, samples)
    for g, w in zip(got, want):
        assert g.pred_sem_seg.data.shape == (1, 43, 42)
        assert torch.equal(g.pred_sem_seg.data, w.pred_sem_seg.data)
        # the resize kernel may round a channel differently with another
        # channel count: scores in [0, 1] through a 4-term bilinear sum
        torch.testing.assert_close(g.seg_logits.data, w.seg_logits.data,
                                   rtol=0, atol=4 * EPS)


def test_all_selected_scores_below_the_unselected_score():
    """An unselected logit above every selected one: every pixel is the
    lowest unselected class, as the full argmax says."""
    model = build(head=head_cfg(unselected_logit=50.0))
    model.eval()
    inputs = torch.randn(1, 3, 32, 32)
    samples = [sample_of((32, 32))]
    with torch.no_grad():
        want = old_path(model, inputs, samples)[0].pred_sem_seg.data
        got = model.predict(inputs, samples)[0].pred_sem_seg.data
    assert torch.equal(got, want)
    assert got.unique().numel() == 1


def test_ade847_vocabulary_through_the_model():
    model = build(class_names=ADE847_CLASSES,
                  head=head_cfg(category_selection=dict(
                      type='DynamicCategorySelection', threshold=0.5,
                      fixed_count=10)),
                  test_cfg=dict(mode='catseg_ensemble', kernel=32,
                                overlap=0.5, ensemble_size=(48, 48)),
                  seg_logits=dict(max_mb=0.5))
    model.eval()
    inputs = torch.randn(1, 3, 36, 36)
    samples = [sample_of((36, 36))]
    with torch.no_grad():
        want = old_path(model, inputs, samples)[0]
        got = model.predict(inputs, samples)[0]
    assert torch.equal(got.pred_sem_seg.data, want.pred_sem_seg.data)
    # 847 x 39 x 34 float32 is 4.3 MiB; within 0.5 MiB: every 4th pixel
    # (847 x 13 x 12 x 4 bytes at stride 3 is just over 0.5 MiB)
    stride = got.seg_logits.metainfo['stride']
    assert stride == 4
    torch.testing.assert_close(
        got.seg_logits.data, want.seg_logits.data[:, ::stride, ::stride],
        rtol=0, atol=4 * EPS)


def test_seg_logits_option_is_checked():
    from mmseg_ovss.utils.errors import OVSSConfigError
    with pytest.raises(OVSSConfigError, match='seg_logits'):
        build(seg_logits=dict(max_gb=1))
