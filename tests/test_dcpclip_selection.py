"""Dynamic Category Selection (DCP-CLIP Eqs. 1-5) on hand-made score maps."""
import math

import pytest
import torch

from mmseg_ovss.models.dcpclip.category_selection import (
    CategorySelection, DynamicCategorySelection, gather_classes,
    scatter_classes)
from mmseg_ovss.utils.errors import OVSSConfigError

# one image, three patches, four classes; S_g's dominant class 0 wins every
# patch before suppression, and patches 1 and 2 find classes 1 and 2 after
IMAGE = torch.tensor([[0.70, 0.20, 0.05, 0.05]])
PATCHES = torch.tensor([[[0.80, 0.10, 0.05, 0.05],
                         [0.50, 0.40, 0.05, 0.05],
                         [0.60, 0.05, 0.30, 0.05]]])


def selected(mask):
    return [torch.nonzero(row).flatten().tolist() for row in mask]


def test_complement_suppression_is_the_hadamard_product():
    dcs = DynamicCategorySelection(suppression='complement')
    out = dcs.suppress(PATCHES, IMAGE)
    for i in range(3):
        for c in range(4):
            assert out[0, i, c] == pytest.approx(
                PATCHES[0, i, c].item() * (1 - IMAGE[0, c].item()))


@pytest.mark.parametrize('mode,expected', [
    ('divide', lambda p, g: p / g), ('subtract', lambda p, g: p - g),
    ('none', lambda p, g: p)])
def test_other_suppressions(mode, expected):
    out = DynamicCategorySelection(suppression=mode).suppress(PATCHES, IMAGE)
    for i in range(3):
        for c in range(4):
            assert out[0, i, c] == pytest.approx(
                expected(PATCHES[0, i, c].item(), IMAGE[0, c].item()))


def test_union_of_patch_and_image_sets():
    dcs = DynamicCategorySelection(threshold=0.5, combine='union')
    # C_p = {0, 1, 2} after suppression, C_g = {0}
    assert selected(dcs.select(PATCHES, IMAGE)) == [[0, 1, 2]]


def test_suppression_uncovers_secondary_classes():
    dcs = DynamicCategorySelection(threshold=0.5, suppression='none')
    assert selected(dcs.select(PATCHES, IMAGE)) == [[0]]


def test_intersection():
    dcs = DynamicCategorySelection(threshold=0.5, combine='intersection')
    assert selected(dcs.select(PATCHES, IMAGE)) == [[0]]
    # an empty intersection keeps the image-level top class
    high = DynamicCategorySelection(threshold=0.9, combine='intersection')
    assert selected(high.select(PATCHES, IMAGE)) == [[0]]


def test_image_threshold():
    image = torch.tensor([[0.30, 0.32, 0.33, 0.05]])
    patches = torch.tensor([[[0.9, 0.05, 0.03, 0.02]]])
    dcs = DynamicCategorySelection(threshold=0.31)
    # C_p = {0} (the patch argmax after suppression), C_g = {1, 2}
    assert selected(dcs.select(patches, image)) == [[0, 1, 2]]


def test_threshold_zero_keeps_every_class():
    dcs = DynamicCategorySelection(threshold=0.0)
    # scores that underflow to 0 are kept too
    image = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert selected(dcs.select(PATCHES, image)) == [[0, 1, 2, 3]]


def test_forward_scores_are_softmaxed_logits():
    torch.manual_seed(0)
    dims, classes = 8, 5
    patch = torch.randn(2, dims, 2, 3, dtype=torch.float64)
    cls = torch.randn(2, dims, dtype=torch.float64)
    text = torch.randn(classes, dims, dtype=torch.float64)
    tau = torch.tensor(10.0, dtype=torch.float64)
    dcs = DynamicCategorySelection(threshold=0.3)
    out = dcs(patch, cls, text, tau)
    for b in range(2):
        logits = [tau * torch.dot(cls[b], text[c]) / cls[b].norm()
                  / text[c].norm() for c in range(classes)]
        total = sum(math.exp(x) for x in logits)
        image = [math.exp(x) / total for x in logits]
        assert out.image_scores[b].tolist() == pytest.approx(image)
        assert out.image_logits[b].tolist() == pytest.approx(
            [float(x) for x in logits])
        wanted = {c for c in range(classes) if image[c] > 0.3}
        for y in range(2):
            for x in range(3):
                f = patch[b, :, y, x]
                row = [math.exp(tau * torch.dot(f, text[c]) / f.norm()
                                / text[c].norm()) for c in range(classes)]
                refined = [row[c] / sum(row) * (1 - image[c])
                           for c in range(classes)]
                wanted.add(max(range(classes), key=refined.__getitem__))
        assert selected(out.mask[b:b + 1]) == [sorted(wanted)]


def test_forced_ground_truth_classes():
    torch.manual_seed(0)
    patch, cls = torch.randn(1, 4, 2, 2), torch.randn(1, 4)
    text = torch.randn(6, 4)
    gt = torch.zeros(1, 6, dtype=torch.bool)
    gt[0, 5] = True
    forced = DynamicCategorySelection(threshold=0.99, training_gt='force')
    ignored = DynamicCategorySelection(threshold=0.99, training_gt='ignore')
    base = ignored(patch, cls, text, torch.tensor(1.0), gt_classes=gt).mask
    with_gt = forced(patch, cls, text, torch.tensor(1.0), gt_classes=gt).mask
    assert torch.equal(with_gt, base | gt)


def test_packing_pads_and_masks():
    mask = torch.tensor([[True, False, True, False],
                         [False, False, False, True]])
    sel = CategorySelection.from_mask(mask)
    assert sel.width == 2
    assert sel.index[0].tolist() == [0, 2]
    assert sel.index[1, 0].item() == 3
    assert sel.valid.tolist() == [[True, True], [True, False]]
    assert sel.num_selected.tolist() == [2, 1]
    # a padding slot holds an unselected class
    assert not mask[1, sel.index[1, 1]]


def test_gather_and_scatter():
    mask = torch.tensor([[True, False, True, False],
                         [False, True, False, False]])
    sel = CategorySelection.from_mask(mask)
    values = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    gathered = gather_classes(values, sel.index)
    for b in range(2):
        for k in range(sel.width):
            assert torch.equal(gathered[b, k], values[b, sel.index[b, k]])
    back = scatter_classes(gathered, sel, 4, fill=-5.0)
    for b in range(2):
        for c in range(4):
            want = values[b, c] if mask[b, c] else torch.full((3, ), -5.0)
            assert torch.equal(back[b, c], want)


def test_bad_options_are_named():
    with pytest.raises(OVSSConfigError, match='combine'):
        DynamicCategorySelection(combine='both')
    with pytest.raises(OVSSConfigError, match='threshold'):
        DynamicCategorySelection(threshold=1.5)
    with pytest.raises(OVSSConfigError, match='suppression'):
        DynamicCategorySelection(suppression='mul')


def test_fixed_count_keeps_the_rule_first_then_by_image_score():
    """The analysis option ``fixed_count``: exactly K classes per image,
    those the rule selects ranked first (by S_g), then the others by S_g;
    training keeps the rule."""
    mask = torch.tensor([[True, False, True, False, False],
                         [False, False, False, False, True]])
    scores = torch.tensor([[0.10, 0.50, 0.05, 0.30, 0.05],
                           [0.40, 0.30, 0.20, 0.06, 0.04]])
    keep = DynamicCategorySelection.keep_count
    # rule classes {0, 2} by S_g, then 1 (0.5) and 3 (0.3)
    assert selected(keep(mask, scores, 1)) == [[0], [4]]
    assert selected(keep(mask, scores, 3)) == [[0, 1, 2], [0, 1, 4]]
    assert selected(keep(mask, scores, 9)) == [[0, 1, 2, 3, 4]] * 2
    dcs = DynamicCategorySelection(fixed_count=2).eval()
    torch.manual_seed(0)
    text = torch.randn(6, 8)
    out = dcs(torch.randn(2, 8, 3, 3), torch.randn(2, 8), text,
              torch.tensor(10.0))
    assert out.num_selected.tolist() == [2, 2]
    dcs.train()
    rule = DynamicCategorySelection().train()
    patches, cls = torch.randn(2, 8, 3, 3), torch.randn(2, 8)
    assert torch.equal(dcs(patches, cls, text, torch.tensor(10.0)).mask,
                       rule(patches, cls, text, torch.tensor(10.0)).mask)
    for bad in (0, 2.5, True):
        with pytest.raises(OVSSConfigError, match='fixed_count'):
            DynamicCategorySelection(fixed_count=bad)
