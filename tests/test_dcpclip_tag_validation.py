"""Tag Validation (DCP-CLIP Eq. 17) on hand-made cases."""
import json

import pytest
import torch

from mmseg_ovss.models.dcpclip.tag_validation import (TagValidation,
                                                      connected_regions,
                                                      swap_scores)
from mmseg_ovss.utils.errors import OVSSConfigError

# vocabulary: 0 sky (seen), 1 river (unseen), 2 sea (seen), 3 path (unseen)
NAMES = ('sky', 'river', 'sea', 'path')
TEXT = torch.eye(4)


def scores_from(labels, classes=4):
    """Scores whose argmax is ``labels`` (B, H, W), distinct per class."""
    scores = torch.rand(labels.shape[0], classes, *labels.shape[1:]) * 0.5
    return scores.scatter(1, labels.unsqueeze(1), 0.9)


def features_like(kinds, size):
    """(1, 4, size, size) features, each patch the embedding of a class."""
    return TEXT[kinds.flatten()].t().reshape(1, 4, size, size)


def test_unseen_region_relabelled_seen_region_kept():
    tv = TagValidation(seen_classes=['sky', 'sea'], top_k=1)
    labels = torch.tensor([[[0, 0, 1, 1],
                            [0, 0, 1, 1],
                            [3, 3, 1, 1],
                            [3, 3, 1, 1]]])
    # the "river" pixels look like sea, "path" looks like path, and the
    # "sky" pixels look like sea (but sky is seen: kept)
    kinds = torch.tensor([[2, 2, 2, 2], [2, 2, 2, 2],
                          [3, 3, 2, 2], [3, 3, 2, 2]])
    torch.manual_seed(0)
    scores = scores_from(labels)
    out = tv(scores, features_like(kinds, 4), TEXT, NAMES)
    want = labels.clone()
    want[labels == 1] = 2
    assert torch.equal(out.argmax(1), want)
    # scores are swapped, not invented
    assert torch.equal(out.sort(dim=1).values, scores.sort(dim=1).values)


def test_label_in_top_k_is_kept():
    tv = TagValidation(seen_classes=['sky', 'sea'], top_k=2)
    labels = torch.ones(1, 2, 2, dtype=torch.long)
    # river's features: 0.8 sea + 0.6 river -> river ranks second
    feats = (0.8 * TEXT[2] + 0.6 * TEXT[1]).view(1, 4, 1, 1).expand(
        1, 4, 2, 2)
    scores = scores_from(labels)
    assert torch.equal(tv(scores, feats, TEXT, NAMES).argmax(1), labels)
    top1 = TagValidation(seen_classes=['sky', 'sea'], top_k=1)
    assert (top1(scores, feats, TEXT, NAMES).argmax(1) == 2).all()


def test_name_map_marks_seen_classes(tmp_path):
    path = tmp_path / 'map.json'
    path.write_text(json.dumps({'river': 'sea'}))
    tv = TagValidation(seen_classes=['sky', 'sea'], name_map=str(path))
    assert tv.seen_mask(NAMES).tolist() == [True, True, True, False]
    default = TagValidation()
    mask = default.seen_mask(('person', 'chest of drawers', 'river'))
    assert mask.tolist() == [True, False, True]


def test_a_name_listing_synonyms_is_seen_by_any_of_them():
    # ADE-847 names list synonyms; 'road, route' is COCO-Stuff's 'road'
    tv = TagValidation(seen_classes=['road', 'sky'])
    mask = tv.seen_mask(('road, route', 'sky', 'river, stream'))
    assert mask.tolist() == [True, True, False]


def test_exact_names_leave_the_paper_s_corrected_classes_unseen():
    """DCP-CLIP Sec. IV-C (Fig. 6): Tag Validation corrects ADE's 'water'
    to 'river' and 'sidewalk' to 'path', so those two were unseen; with
    exact COCO-Stuff names (the configs' default) they are, and through
    the name map (COCO-Stuff 'water-other', 'pavement') they are not."""
    names = ('water', 'sidewalk', 'river', 'tree')
    seen = TagValidation().seen_mask(names).tolist()
    assert seen == [False, False, True, True]
    mapped = TagValidation(name_map='data/name_maps/ade150.json')
    assert mapped.seen_mask(names).tolist() == [True, True, True, True]


@pytest.mark.parametrize('labelling', ['scipy', 'torch'])
def test_connected_components_are_separate_regions(labelling):
    labels = torch.tensor([[[1, 1, 0, 1],
                            [1, 0, 0, 1],
                            [0, 0, 1, 1],
                            [1, 0, 0, 0]]])
    ids = connected_regions(labels, labelling)
    # the left blob, the right blob and the lone corner are three regions
    assert ids[0, 0, 0] == ids[0, 1, 0] == ids[0, 0, 1] == 0
    assert ids[0, 0, 3] == ids[0, 2, 2] == 3
    assert ids[0, 3, 0] == 12
    assert len({ids[0, y, x].item() for y in range(4) for x in range(4)
                if labels[0, y, x] == 0}) == 1
    # one class, two components: only the one that looks like sea changes
    tv = TagValidation(seen_classes=['sky', 'sea'], top_k=1,
                       region='components')
    kinds = torch.tensor([[2, 2, 0, 1], [2, 0, 0, 1],
                          [0, 0, 1, 1], [1, 0, 0, 0]])
    out = tv(scores_from(labels), features_like(kinds, 4), TEXT, NAMES)
    want = labels.clone()
    want[0, :2, :2][labels[0, :2, :2] == 1] = 2
    assert torch.equal(out.argmax(1), want)
    by_class = TagValidation(seen_classes=['sky', 'sea'], top_k=1)
    # as one class region, river's pooled features stay river-like
    assert torch.equal(by_class(scores_from(labels), features_like(kinds, 4),
                                TEXT, NAMES).argmax(1), labels)


def test_pooling_is_area_weighted_over_the_patch_grid():
    feats = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).view(2, 3, 2, 2)
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 0, 1],
                            [2, 2, 2, 2], [2, 2, 2, 2]],
                           [[1] * 4] * 4])
    tv = TagValidation(seen_classes=['sky'])
    index, image, label = tv.regions(labels)
    pooled = tv.pool(feats, index, image)
    assert len(label) == 4
    for r in range(len(label)):
        b = image[r].item()
        total, count = torch.zeros(3, dtype=torch.float64), 0
        for y in range(4):
            for x in range(4):
                if index[b, y, x] == r:
                    total += feats[b, :, y // 2, x // 2]
                    count += 1
        assert torch.allclose(pooled[r], total / count)


def test_selected_candidates_only():
    tv = TagValidation(seen_classes=['sky', 'sea'], top_k=1,
                       candidates='selected')
    labels = torch.ones(1, 2, 2, dtype=torch.long)
    feats = TEXT[2].view(1, 4, 1, 1).expand(1, 4, 2, 2)
    allowed = torch.tensor([[True, True, False, False]])
    out = tv(scores_from(labels), feats, TEXT, NAMES, candidate_mask=allowed)
    # sea is not a candidate: river (kept in the candidates) stays
    assert (out.argmax(1) == 1).all()


def test_swap_scores():
    scores = torch.tensor([[[[0.9]], [[0.2]], [[0.5]]]])
    out = swap_scores(scores, torch.tensor([[[0]]]), torch.tensor([[[2]]]))
    assert out.flatten().tolist() == pytest.approx([0.5, 0.2, 0.9])


def test_bad_options():
    with pytest.raises(OVSSConfigError, match='top_k'):
        TagValidation(top_k=0)
    with pytest.raises(OVSSConfigError, match='region'):
        TagValidation(region='superpixels')
    with pytest.raises(OVSSConfigError, match='name_map'):
        TagValidation(name_map='no/such/map.json')


def scipy_regions(labels):
    """Direct reference: ``scipy.ndimage.label`` (default structure: the
    4-neighbour cross) of each label's mask of each image; every component
    named by its smallest flat pixel index."""
    ndimage = pytest.importorskip('scipy.ndimage')
    batch, height, width = labels.shape
    ids = torch.full(labels.shape, -1, dtype=torch.long)
    flat = torch.arange(height * width).view(height, width)
    for b in range(batch):
        for c in labels[b].unique().tolist():
            parts, count = ndimage.label((labels[b] == c).numpy())
            parts = torch.from_numpy(parts).long()
            for part in range(1, count + 1):
                inside = parts == part
                ids[b][inside] = int(flat[inside].min())
    return ids


@pytest.mark.parametrize('labelling', ['scipy', 'torch'])
def test_components_of_a_hand_made_map_are_scipys(labelling):
    """A spiral of one label (long propagation paths), same-label pixels
    touching only diagonally (separate under 4-connectivity) and the same
    label in two images."""
    spiral = torch.tensor([[1, 1, 1, 1, 1, 1, 1],
                           [0, 0, 0, 0, 0, 0, 1],
                           [1, 1, 1, 1, 1, 0, 1],
                           [1, 0, 0, 0, 1, 0, 1],
                           [1, 0, 1, 1, 1, 0, 1],
                           [1, 0, 0, 0, 0, 0, 1],
                           [1, 1, 1, 1, 1, 1, 1]])
    diagonal = torch.tensor([[2, 0, 2, 0, 2, 0, 2],
                             [0, 2, 0, 2, 0, 2, 0],
                             [2, 0, 2, 0, 2, 0, 2],
                             [3, 3, 3, 3, 3, 3, 3],
                             [1, 1, 3, 1, 1, 3, 1],
                             [1, 3, 3, 3, 1, 3, 1],
                             [1, 1, 1, 1, 1, 3, 5]])
    labels = torch.stack([spiral, diagonal])
    ids = connected_regions(labels, labelling)
    want = scipy_regions(labels)
    assert torch.equal(ids, want)
    # the spiral's 1s are one region, its 0s another; each of the 21
    # chequerboard cells is its own region (diagonal contact only)
    assert ids[0].unique().tolist() == [0, 7]
    assert len(ids[1, :3].unique()) == 21


@pytest.mark.parametrize('labelling', ['scipy', 'torch'])
def test_components_match_scipy_labelling(labelling):
    """The same components, named the same, as scipy's 4-connected
    labelling of each class on a random smooth map."""
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(
        torch.randn(2, 4, 6, 6), size=(48, 40), mode='bilinear')
    labels = smooth.argmax(1)
    assert torch.equal(connected_regions(labels, labelling),
                       scipy_regions(labels))


def test_labelling_is_checked():
    with pytest.raises(OVSSConfigError, match='labelling'):
        connected_regions(torch.zeros(1, 2, 2, dtype=torch.long), 'cv2')
