"""Tag validation (DCP-CLIP Eq. 17) on compact selected-class scores (the
map every unselected class shares, then the selected slots) against the
full path: the scores filled to all C classes, validated, resized,
argmax."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope

from mmseg.registry import MODELS
from mmseg_ovss.datasets.large_vocabularies import ADE847_CLASSES
from mmseg_ovss.models.catseg import segmentor as segmentor_module
from mmseg_ovss.models.catseg.compact_labels import (carry_classes,
                                                     compact_scores_labels)
from mmseg_ovss.models.dcpclip.category_selection import CategorySelection
from mmseg_ovss.models.dcpclip.tag_validation import (swap_compact_scores,
                                                      swap_scores)
from test_dcpclip_head import CLASSES, build, head_cfg
from test_dcpclip_labels import old_path, sample_of

EPS = torch.finfo(torch.float32).eps
# 0 river (unseen), 1 sky (seen), 2 path (unseen), 3 sea (seen),
# 4 lake (unseen), 5 field (unseen)
NAMES = ('river', 'sky', 'path', 'sea', 'lake', 'field')
TEXT = SimpleNamespace(embeddings=torch.eye(6), class_names=NAMES)
FILL = 0.3


def filled(compact, selection):
    """The direct fill: class c of image b is its slot's channel when it
    has one, else channel 0."""
    batch, classes = selection.mask.shape
    out = compact.new_empty((batch, classes, *compact.shape[-2:]))
    for b in range(batch):
        for c in range(classes):
            out[b, c] = compact[b, 0]
            for slot in range(selection.width):
                if selection.valid[b, slot] and selection.index[b, slot] == c:
                    out[b, c] = compact[b, 1 + slot]
    return out


def hand_made_scores():
    """(2, 1 + K, 2, 8) compact scores and their selection, four 2-column
    regions per image, with the (2, 6, 1, 4) features that steer tag
    validation (one patch per region: the embedding of a class plus a
    tenth of its label's, which then ranks second):

    image 0 (selects 2, 3, 5; lowest unselected 0):
      path -> field (a selected class), field -> lake (unselected),
      river (the unselected map wins) -> sky (unselected), sea (seen) tied
      with field: kept, and stays sea;
    image 1 (selects 2, 4): path tied with lake -> river (the lowest
      unselected class; then tied with lake, river wins), river kept (the
      carried channel ties with the shared map: river), lake kept twice.
    """
    mask = torch.tensor([[False, False, True, True, False, True],
                         [False, False, True, False, True, False]])
    selection = CategorySelection.from_mask(mask)
    assert not selection.valid[1, 2]  # image 1 has a padding slot
    slots = torch.full((2, 3, 2, 8), 0.1)
    slots[0, 0, :, 0:2] = 0.9  # path
    slots[0, 2, :, 2:4] = 0.8  # field
    slots[0, :, :, 4:6] = 0.2  # below the unselected map: river
    slots[0, 1, :, 6:8] = 0.9  # sea ...
    slots[0, 2, :, 6:8] = 0.9  # ... tied with field
    slots[1, 0, :, 0:2] = 0.9  # path ...
    slots[1, 1, :, 0:2] = 0.9  # ... tied with lake
    slots[1, :2, :, 2:4] = 0.2  # river
    slots[1, 1, :, 4:8] = 0.7  # lake
    slots[1, 2] = 5.0  # the padding slot is never a label
    scores = torch.cat([torch.full((2, 1, 2, 8), FILL), slots], dim=1)
    kinds = torch.tensor([[5, 4, 1, 5], [0, 0, 4, 4]])
    labels = torch.tensor([[2, 5, 0, 3], [2, 0, 4, 4]])
    features = TEXT.embeddings[kinds] + 0.1 * TEXT.embeddings[labels]
    return scores, selection, features.permute(0, 2, 1).unsqueeze(2)


def tv_head(candidates='all'):
    init_default_scope('mmseg')
    return MODELS.build(head_cfg(tag_validation=dict(
        type='TagValidation', seen_classes=['sky', 'sea'], top_k=1,
        candidates=candidates)))


def test_swap_on_compact_scores_is_the_full_swap():
    """Relabels to a selected class, to an unselected one, to the lowest
    unselected one and from it; unchanged pixels of the lowest unselected
    class."""
    scores, selection, _ = hand_made_scores()
    labels = compact_scores_labels(scores, selection)
    full = filled(scores, selection)
    assert torch.equal(labels, full.argmax(1))
    assert labels[0, 0, ::2].tolist() == [2, 5, 0, 3]
    assert labels[1, 0, ::2].tolist() == [2, 0, 4, 4]
    new = labels.clone()
    new[0, :, 0:2] = 5  # path -> field (selected)
    new[0, :, 2:4] = 4  # field -> lake (unselected)
    new[0, :, 4:6] = 1  # river (lowest unselected) -> sky (unselected)
    new[1, :, 0:2] = 0  # path -> river (lowest unselected)
    swapped, carried = swap_compact_scores(scores, selection, labels, new)
    # the classes of the swaps got channels; river of image 1 kept its map
    assert carried.mask.tolist() == [
        [True, True, True, True, True, True],
        [True, False, True, False, True, False]]
    want = swap_scores(full, labels, new)
    assert torch.equal(filled(swapped, carried), want)
    assert torch.equal(compact_scores_labels(swapped, carried),
                       want.argmax(1))
    # river -> sky swaps two copies of the shared map: the full path's
    # argmax stays river (the lower index); elsewhere it is the new label
    expected = new.clone()
    expected[0, :, 4:6] = 0
    assert torch.equal(want.argmax(1), expected)
    # no swap: nothing carried
    same, kept = swap_compact_scores(scores, selection, labels, labels)
    assert same is scores and kept is selection


def test_carrying_a_class_keeps_the_labels():
    scores, selection, _ = hand_made_scores()
    every = torch.ones_like(selection.mask)
    carried_scores, carried = carry_classes(scores, selection, every)
    assert carried.valid.all() and carried_scores.shape[1] == 7
    assert torch.equal(filled(carried_scores, carried),
                       filled(scores, selection))
    assert torch.equal(compact_scores_labels(carried_scores, carried),
                       compact_scores_labels(scores, selection))
    with pytest.raises(ValueError, match='class mask'):
        carry_classes(scores, selection, every[:, :3])


def full_regions(head, full, features, candidates, regions):
    """The ensemble's full path: each image's region validated alone."""
    out = full.clone()
    for i, (top, bottom, left, right) in enumerate(regions):
        out[i:i + 1, :, top:bottom, left:right] = head.validate_tags(
            full[i:i + 1, :, top:bottom, left:right], features[i:i + 1],
            TEXT, candidate_mask=candidates[i:i + 1])
    return out


@pytest.mark.parametrize('candidates', ['all', 'selected'])
@pytest.mark.parametrize('padded', [False, True])
def test_head_validates_compact_scores_as_the_full_ones(candidates, padded):
    """``validate_compact`` (whole batch; per image region with padding, as
    under the ensemble), then a resize: the full path's labels and
    scores."""
    head = tv_head(candidates)
    scores, selection, features = hand_made_scores()
    if padded:
        scores = F.pad(scores, (0, 3, 0, 1))  # zero on the padding
        regions = [(0, 2, 0, 8), (0, 2, 0, 8)]
    else:
        regions = None
    full = filled(scores, selection)
    mask = selection.mask
    with torch.no_grad():
        if regions is None:
            want = head.validate_tags(full, features, TEXT, mask)
        else:
            want = full_regions(head, full, features, mask, regions)
        got, carried = head.validate_compact(scores, selection, features,
                                             TEXT, mask, regions)
    assert torch.equal(filled(got, carried), want)
    labels = want.argmax(1)[:, :, :8]
    if candidates == 'all':
        # river -> sky swaps equal scores: river stays (see above)
        assert labels[0, 0, ::2].tolist() == [5, 4, 0, 3]
        assert labels[1, 0, ::2].tolist() == [0, 0, 4, 4]
    else:
        # re-scoring keeps to the selected classes and the region's label
        assert labels[0, 0, ::2].tolist() == [5, 5, 0, 3]
        assert labels[1, 0, ::2].tolist() == [2, 0, 4, 4]
    size = (5, 17)
    want = F.interpolate(want, size, mode='bilinear', align_corners=False)
    got = F.interpolate(got, size, mode='bilinear', align_corners=False)
    assert torch.equal(compact_scores_labels(got, carried), want.argmax(1))
    # the resize kernel may round a channel differently with another
    # channel count: scores in [0, 1] through a 4-term bilinear sum
    torch.testing.assert_close(filled(got, carried), want, rtol=0,
                               atol=4 * EPS)


def drop_from_selection(model, dropped):
    """Make the model's category selection leave out ``dropped``: the
    class the tiny random CLIP's features favour, so tag validation
    relabels regions to a class without a slot."""
    selection_module = model.decode_head.category_selection
    select = selection_module.forward

    def forward(*args, **kwargs):
        selection = select(*args, **kwargs)
        mask = selection.mask.clone()
        mask[:, dropped] = False
        return CategorySelection.from_mask(
            mask, image_logits=selection.image_logits,
            image_scores=selection.image_scores)

    selection_module.forward = forward


def tv_model(mode, candidates='all', **kwargs):
    test_cfg = dict(mode=mode)
    if mode == 'catseg_ensemble':
        test_cfg.update(kernel=32, overlap=0.5, ensemble_size=(48, 48))
    tv = dict(type='TagValidation', top_k=1, seen_classes=CLASSES[:4],
              candidates=candidates)
    model = build(head=head_cfg(tag_validation=tv), test_cfg=test_cfg,
                  **kwargs)
    model.eval()
    return model


def padded_flipped_batch(seed=0):
    torch.manual_seed(seed)
    inputs = F.pad(torch.randn(2, 3, 40, 44), (0, 4, 0, 8))
    return inputs, [sample_of((40, 44), (0, 4, 0, 8)),
                    sample_of((40, 44), (0, 4, 0, 8), flip=True)]


@pytest.mark.parametrize('candidates', ['all', 'selected'])
@pytest.mark.parametrize('mode', ['whole', 'catseg_ensemble'])
def test_model_labels_with_tag_validation_equal_the_full_path(mode,
                                                             candidates):
    model = tv_model(mode, candidates, seg_logits=dict(max_mb=None))
    drop_from_selection(model, CLASSES.index('car'))
    inputs, samples = padded_flipped_batch()
    with torch.no_grad():
        want = old_path(model, inputs, samples)
        got = model.predict(inputs, samples)
        tv = model.decode_head.tag_validation
        model.decode_head.tag_validation = None
        plain = old_path(model, inputs, samples)
        model.decode_head.tag_validation = tv
    changed = 0
    for g, w, p in zip(got, want, plain):
        assert g.pred_sem_seg.data.shape == (1, 43, 42)
        assert torch.equal(g.pred_sem_seg.data, w.pred_sem_seg.data)
        torch.testing.assert_close(g.seg_logits.data, w.seg_logits.data,
                                   rtol=0, atol=4 * EPS)
        changed += int((w.pred_sem_seg.data != p.pred_sem_seg.data).sum())
        if candidates == 'all':
            # the relabelled regions took car, which no image selected
            assert CLASSES.index('car') not in p.pred_sem_seg.data
    if candidates == 'all':
        assert changed > 0
        assert any(CLASSES.index('car') in w.pred_sem_seg.data
                   for w in want)


def test_ade847_vocabulary_with_tag_validation():
    model = build(class_names=ADE847_CLASSES,
                  head=head_cfg(category_selection=dict(
                      type='DynamicCategorySelection', threshold=0.5,
                      fixed_count=3), tag_validation=dict(
                          type='TagValidation', top_k=1)),
                  test_cfg=dict(mode='catseg_ensemble', kernel=32,
                                overlap=0.5, ensemble_size=(48, 48)),
                  seg_logits=dict(max_mb=0.5))
    model.eval()
    torch.manual_seed(0)
    inputs = torch.randn(1, 3, 36, 36)
    samples = [sample_of((36, 36))]
    with torch.no_grad():
        want = old_path(model, inputs, samples)[0]
        got = model.predict(inputs, samples)[0]
        model.decode_head.tag_validation = None
        plain = old_path(model, inputs, samples)[0]
    assert torch.equal(got.pred_sem_seg.data, want.pred_sem_seg.data)
    assert bool((want.pred_sem_seg.data != plain.pred_sem_seg.data).any())
    stride = got.seg_logits.metainfo['stride']
    torch.testing.assert_close(
        got.seg_logits.data, want.seg_logits.data[:, ::stride, ::stride],
        rtol=0, atol=4 * EPS)


@pytest.mark.parametrize('mode', ['whole', 'catseg_ensemble'])
def test_the_full_vocabulary_scores_are_not_built(mode, monkeypatch):
    """With tag validation, ``predict`` builds no (B, C, H, W) scores: the
    full inference, the head's fill and full tag validation are not
    called; the decision runs once per batch (whole) or image
    (ensemble)."""
    model = tv_model(mode)
    drop_from_selection(model, CLASSES.index('car'))
    head = model.decode_head
    tv = head.tag_validation

    def refuse(*args, **kwargs):
        raise AssertionError('the full C-class path ran')

    for owner, name in ((model, 'inference'), (model, 'validate_ensemble'),
                        (head, 'predict'), (head, 'selected_scores'),
                        (head, 'validate_tags'), (tv, 'forward'),
                        (segmentor_module, 'scatter_classes')):
        monkeypatch.setattr(owner, name, refuse)
    decide = tv.decide
    calls = []

    def spy(labels, *args, **kwargs):
        calls.append(tuple(labels.shape))
        return decide(labels, *args, **kwargs)

    monkeypatch.setattr(tv, 'decide', spy)
    inputs, samples = padded_flipped_batch()
    with torch.no_grad():
        out = model.predict(inputs, samples)
    assert out[0].pred_sem_seg.data.shape == (1, 43, 42)
    # the ensemble validates each image's final label map, at ori_shape
    assert calls == ([(2, 48, 48)] if mode == 'whole' else
                     [(1, 43, 42), (1, 43, 42)])
