"""FreeCP's crop stage and its device paths: deduplicated crop encoding,
torch connected components (Eq. 7 groups, CLIP-ES boxes) against scipy,
and the purification observer."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from mmseg_ovss.freecp.pipeline import FreeCPWindowPipeline
from mmseg_ovss.freecp.purification import (ambiguity_groups,
                                            classify_group_crops,
                                            encode_unique_crops)
from mmseg_ovss.testing.tiny_clip import build_tiny_clip
from mmseg_ovss.utils.boxes import (contour_boxes, label_components,
                                    score_map_boxes)

GRID = (6, 8)
PATCH = 16


@pytest.fixture(scope='module')
def clip_model():
    return build_tiny_clip(seed=0)


class CountingEncoder:
    """The tiny CLIP's image encoder, recording each batch size."""

    def __init__(self, model):
        self.model = model
        self.batches = []

    def __call__(self, crops):
        self.batches.append(len(crops))
        return self.model.encode_image(crops)


def test_unique_crops_get_the_embedding_of_encoding_each_alone(clip_model):
    gen = torch.Generator().manual_seed(0)
    distinct = torch.randn(3, 3, 64, 64, generator=gen)
    crops = distinct[torch.tensor([0, 1, 0, 2, 1, 0])]
    encoder = CountingEncoder(clip_model)
    with torch.no_grad():
        out = encode_unique_crops(crops, encoder)
        alone = torch.cat([clip_model.encode_image(c[None]) for c in crops])
    assert encoder.batches == [3]
    tol = 16 * torch.finfo(torch.float32).eps * alone.abs().max()
    torch.testing.assert_close(out, alone, rtol=0, atol=float(tol))
    # repeated rows are bit-identical copies of their first occurrence
    assert torch.equal(out[0], out[2]) and torch.equal(out[0], out[5])
    encoder.batches.clear()
    with torch.no_grad():
        encode_unique_crops(crops, encoder, deduplicate=False)
    assert encoder.batches == [6]


def _blob(y0, y1, x0, x1):
    grid = torch.zeros(GRID)
    grid[y0:y1, x0:x1] = 1.0
    return grid


@pytest.mark.parametrize('winner_sets_only', [False, True])
def test_deduplicated_votes_equal_every_crop_encoded(clip_model,
                                                     winner_sets_only):
    """Two windows with the same pixels and the same maps: one group of
    four classes each, the same box, so one distinct crop for two boxes."""
    blob = _blob(1, 4, 2, 6)
    maps = torch.stack([blob, blob, blob, blob])[None].repeat(2, 1, 1, 1)
    keep = torch.ones(2, 4, dtype=torch.bool)
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, GRID[0] * PATCH, GRID[1] * PATCH,
                        generator=gen)
    images = image.repeat(2, 1, 1, 1)
    text = torch.randn(4, 32, generator=gen)
    groups = ambiguity_groups(maps, keep, 0.5)
    assert len(groups) == 2  # one group of 4 classes per window
    outcomes = []
    for dedup in (False, True):
        encoder = CountingEncoder(clip_model)
        with torch.no_grad():
            votes = classify_group_crops(
                groups, maps, images, PATCH, encoder, text, crop_size=64,
                winner_sets_only=winner_sets_only, deduplicate=dedup)
        outcomes.append((votes, sum(encoder.batches)))
    (full, n_full), (dedup, n_dedup) = outcomes
    assert n_full == 2 and n_dedup == 1
    assert torch.equal(full.boxes, dedup.boxes)
    assert torch.equal(full.winner, dedup.winner)
    assert (dedup.winner >= 0).all()


def test_deduplication_keeps_votes_on_random_maps(clip_model):
    gen = torch.Generator().manual_seed(2)
    maps = torch.rand(3, 5, *GRID, generator=gen)
    keep = torch.rand(3, 5, generator=gen) > 0.2
    images = torch.randn(3, 3, GRID[0] * PATCH, GRID[1] * PATCH,
                         generator=gen)
    images[2] = images[0]  # window 2 repeats window 0's pixels
    maps[2] = maps[0]
    keep[2] = keep[0]
    text = torch.randn(5, 32, generator=gen)
    groups = ambiguity_groups(maps, keep, 0.3)
    assert len(groups) >= 2
    with torch.no_grad():
        full = classify_group_crops(groups, maps, images, PATCH,
                                    clip_model.encode_image, text,
                                    crop_size=64, deduplicate=False)
        dedup = classify_group_crops(groups, maps, images, PATCH,
                                     clip_model.encode_image, text,
                                     crop_size=64, deduplicate=True)
    assert (full.winner >= 0).sum() > 2
    assert torch.equal(full.winner, dedup.winner)


def _groups_as_sets(groups):
    return sorted((int(w), tuple(torch.nonzero(m).flatten().tolist()))
                  for w, m in zip(groups.window, groups.members))


@pytest.mark.parametrize('seed', range(4))
def test_torch_components_equal_scipy_groups(seed):
    gen = torch.Generator().manual_seed(seed)
    b, k = 4, 9
    maps = torch.rand(b, k, *GRID, generator=gen) ** 3
    keep = torch.rand(b, k, generator=gen) > 0.3
    for threshold in (0.2, 0.35, 0.5):
        ref = ambiguity_groups(maps, keep, threshold, components='scipy')
        dev = ambiguity_groups(maps, keep, threshold, components='torch')
        assert torch.equal(ref.window, dev.window)
        assert torch.equal(ref.members, dev.members)
    assert len(ref) or len(dev) == 0


def test_torch_components_hand_made_chain():
    """A chain a-b-c (a, c not adjacent) is one group: needs the
    transitive closure, not only direct edges."""
    maps = torch.stack([_blob(0, 3, 0, 3), _blob(0, 3, 1, 4),
                        _blob(0, 3, 2, 5), _blob(4, 6, 6, 8)])[None]
    keep = torch.ones(1, 4, dtype=torch.bool)
    for components in ('scipy', 'torch'):
        groups = ambiguity_groups(maps, keep, 0.3, components=components)
        assert _groups_as_sets(groups) == [(0, (0, 1, 2))]


def _same_partition(ours, scipy_labels):
    """Equal partitions with ours ordered like scipy's raster labels."""
    fg = scipy_labels > 0
    assert torch.equal(torch.from_numpy(fg), ours >= 0)
    _, compact = np.unique(ours.numpy()[fg], return_inverse=True)
    assert np.array_equal(compact.reshape(-1) + 1, scipy_labels[fg])


@pytest.mark.parametrize('connectivity', [4, 8])
def test_label_components_equal_scipy(connectivity):
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(5, 13, 17, generator=gen) > 0.55
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, connectivity // 4)
    ref, _ = ndimage.label(mask.numpy(), structure=structure)
    _same_partition(label_components(mask, connectivity), ref)
    # a long snake needs many propagation rounds
    snake = torch.zeros(1, 9, 9, dtype=torch.bool)
    snake[0, ::2] = True
    snake[0, 1::4, -1] = True
    snake[0, 3::4, 0] = True
    ref, num = ndimage.label(snake.numpy(), structure=structure)
    assert num == 1
    _same_partition(label_components(snake, connectivity), ref)


@pytest.mark.parametrize('include_holes', [True, False])
def test_torch_boxes_equal_scipy_boxes(include_holes):
    gen = torch.Generator().manual_seed(4)
    maps = torch.rand(6, 12, 14, generator=gen)
    ring = torch.zeros(12, 14)
    ring[2:9, 3:11] = 1
    ring[4:7, 5:8] = 0  # one hole
    maps[0] = ring
    ref = score_map_boxes(maps, include_holes=include_holes,
                          labelling='scipy')
    dev = score_map_boxes(maps, include_holes=include_holes,
                          labelling='torch')
    assert torch.equal(ref[0], dev[0]) and torch.equal(ref[1], dev[1])
    # and both are cv2's contours on the hand-made ring
    ring_boxes = dev[0][dev[1] == 0]
    expected = contour_boxes(ring.numpy()) if include_holes else \
        contour_boxes(ring.numpy())[:1]
    assert sorted(map(tuple, ring_boxes.tolist())) == \
        sorted(map(tuple, expected.tolist()))


def test_pipeline_device_path_equals_cpu_path(clip_model):
    gen = torch.Generator().manual_seed(5)
    cams = torch.rand(2, 6, *GRID, generator=gen)
    refined = torch.rand(2, 6, *GRID, generator=gen) ** 2
    images = torch.randn(2, 3, GRID[0] * PATCH, GRID[1] * PATCH,
                         generator=gen)
    text = torch.randn(6, 32, generator=gen)
    out = {}
    for components in ('scipy', 'torch'):
        pipe = FreeCPWindowPipeline(rp_threshold=0.1, ap_threshold=0.3,
                                    crop_size=64, components=components)
        with torch.no_grad():
            out[components] = pipe.purify(
                cams, refined, torch.arange(6), images, PATCH,
                clip_model.encode_image, text)
    assert torch.equal(out['scipy'], out['torch'])


def test_observer_sees_each_decision_and_changes_nothing(clip_model):
    gen = torch.Generator().manual_seed(6)
    cams = torch.rand(2, 5, *GRID, generator=gen)
    refined = torch.rand(2, 5, *GRID, generator=gen) ** 2
    images = torch.randn(2, 3, GRID[0] * PATCH, GRID[1] * PATCH,
                         generator=gen)
    text = torch.randn(5, 32, generator=gen)
    pipe = FreeCPWindowPipeline(rp_threshold=0.1, ap_threshold=0.3,
                                crop_size=64)
    events = []
    with torch.no_grad():
        plain = pipe.purify(cams, refined, torch.arange(5), images, PATCH,
                            clip_model.encode_image, text)
        seen = pipe.purify(cams, refined, torch.arange(5), images, PATCH,
                           clip_model.encode_image, text,
                           observer=events.append)
    assert torch.equal(plain, seen)
    steps = [e.step for e in events]
    assert steps == ['start', 'rp', 'groups', 'crops', 'ap', 'end']
    rp = events[1]
    # Eq. 5 scores by a direct half-Dice sum
    inter = (cams * refined).sum(dim=(-2, -1))
    direct = inter / (cams.sum(dim=(-2, -1)) + refined.sum(dim=(-2, -1))
                      + 1e-8)
    torch.testing.assert_close(rp.rp_scores, direct)
    assert torch.equal(rp.keep, direct > 0.1)
    assert len(events[2].groups) > 0 and events[3].votes is not None
    assert torch.equal(events[-1].maps, seen)
    assert torch.equal(events[-1].keep, events[-2].keep)
