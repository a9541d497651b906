"""Class purification on hand-built activation maps (Eqs. 5-8)."""
import pytest
import torch
import torch.nn.functional as F

from mmseg_ovss.freecp import crops as crops_module
from mmseg_ovss.freecp.crops import crop_and_resize, crop_dtype
from mmseg_ovss.freecp.pipeline import FreeCPWindowPipeline
from mmseg_ovss.freecp.purification import (ambiguity_groups,
                                            classify_group_crops,
                                            eliminate_ambiguity,
                                            redundancy_purification)
from mmseg_ovss.testing.tiny_clip import build_tiny_clip
from mmseg_ovss.utils.errors import OVSSConfigError

GRID = (6, 8)
PATCH = 16


def _blob(y0, y1, x0, x1, value=1.0):
    grid = torch.zeros(GRID)
    grid[y0:y1, x0:x1] = value
    return grid


@pytest.fixture(scope='module')
def clip_model():
    return build_tiny_clip(seed=0)


def test_redundancy_removes_inconsistent_class_keeps_lone_class():
    cams = torch.stack([_blob(1, 4, 1, 4, 0.9),           # present class
                        torch.full(GRID, 0.05)])          # weak, diffuse
    refined = torch.stack([_blob(1, 4, 1, 4, 1.0),        # same place
                           _blob(3, 6, 5, 8, 1.0)])       # moved elsewhere
    keep = torch.ones(1, 2, dtype=torch.bool)
    out = redundancy_purification(cams[None], refined[None], keep, 0.15)
    assert out.tolist() == [[True, False]]
    # the paper's IoU variant agrees on this case
    out_iou = redundancy_purification(cams[None], refined[None], keep, 0.15,
                                      metric='iou')
    assert out_iou.tolist() == [[True, False]]
    # a class removed before stays removed
    assert not redundancy_purification(cams[None], refined[None],
                                       torch.zeros(1, 2, dtype=torch.bool),
                                       0.15).any()


def _ambiguous_maps():
    """Classes 0 and 1 overlap on the same blob, class 2 is elsewhere;
    class 3 overlaps 0/1 but is not a candidate."""
    maps = torch.stack([_blob(1, 4, 1, 4), 0.95 * _blob(1, 4, 1, 4),
                        _blob(4, 6, 5, 8), _blob(1, 4, 1, 4)])
    keep = torch.tensor([[True, True, True, False]])
    return maps[None], keep


def test_ambiguity_groups_are_connected_components():
    maps, keep = _ambiguous_maps()
    groups = ambiguity_groups(maps, keep, 0.7)
    assert len(groups) == 1
    assert groups.window.tolist() == [0]
    assert groups.members.tolist() == [[True, True, False, False]]
    # transitive chain 0-1-2 forms one group, a batch of two windows works
    chain = torch.stack([_blob(0, 6, 0, 3), _blob(0, 6, 0, 4),
                         _blob(0, 6, 0, 5), _blob(0, 1, 7, 8)])
    both = torch.stack([chain, maps[0]])
    keep2 = torch.tensor([[True] * 4, [True, True, True, False]])
    groups = ambiguity_groups(both, keep2, 0.7)
    got = sorted(zip(groups.window.tolist(),
                     map(tuple, groups.members.int().tolist())))
    assert got == [(0, (1, 1, 1, 0)), (1, (1, 1, 0, 0))]
    lone = torch.tensor([[True, False, False, False]])
    assert len(ambiguity_groups(maps, lone, 0.7)) == 0


def _votes(clip_model, winner):
    maps, keep = _ambiguous_maps()
    groups = ambiguity_groups(maps, keep, 0.7)
    images = torch.randn(1, 3, GRID[0] * PATCH, GRID[1] * PATCH)
    # the expected crop: the group's box (rows 1-3, cols 1-3) in pixels
    box = torch.tensor([[1, 1, 4, 4]]) * PATCH
    crop = crop_and_resize(images, torch.tensor([0]), box, 64)
    with torch.no_grad():
        feat = F.normalize(clip_model.encode_image(crop), dim=-1)[0]
    text = torch.randn(4, feat.numel())
    text[winner] = feat          # the winner matches the crop exactly
    text[1 - winner] = -feat
    text[3] = feat               # not a member: must be ignored
    with torch.no_grad():
        votes = classify_group_crops(groups, maps, images, PATCH,
                                     clip_model.encode_image, text,
                                     crop_size=64)
    return groups, votes, keep


@pytest.mark.parametrize('winner', [0, 1])
def test_ambiguous_pair_resolved_by_crop_classifier(clip_model, winner):
    groups, votes, keep = _votes(clip_model, winner)
    assert votes.boxes.tolist() == [[1, 1, 4, 4]]
    assert votes.winner.tolist() == [winner]
    new_keep, suppress = eliminate_ambiguity(groups, votes, keep, GRID,
                                             mode='window')
    expect = [True, True, True, False]
    expect[1 - winner] = False
    assert new_keep.tolist() == [expect] and suppress is None
    # paper: the loser is zeroed inside the box only
    same_keep, local = eliminate_ambiguity(groups, votes, keep, GRID,
                                           mode='local')
    assert torch.equal(same_keep, keep)
    assert torch.equal(local[0, 1 - winner], _blob(1, 4, 1, 4).bool())
    assert not local[0, winner].any() and not local[0, 2:].any()


def test_degenerate_box_keeps_whole_group(clip_model):
    groups, votes, keep = _votes(clip_model, 0)
    votes.degenerate[:] = True
    votes.winner[:] = -1
    new_keep, _ = eliminate_ambiguity(groups, votes, keep, GRID, 'window')
    assert torch.equal(new_keep, keep)
    with pytest.raises(ValueError, match='unknown ambiguity'):
        eliminate_ambiguity(groups, votes, keep, GRID, 'global')


def _pipeline_inputs():
    """Query maps of 4 classes where class 3 is redundant, 0/1 ambiguous."""
    torch.manual_seed(0)
    n = GRID[0] * GRID[1]
    maps = torch.stack([_blob(1, 4, 1, 4, 4.0), _blob(1, 4, 1, 4, 3.9),
                        _blob(3, 5, 5, 7, 4.0),
                        torch.rand(GRID) * 0.5 - 1.5]) + 0.1
    query_maps = maps.softmax(dim=0)[None]
    transition = torch.eye(n)[None]
    return query_maps, transition


@pytest.mark.parametrize('order', ['none', 'rp', 'ap', 'ap_rp', 'rp_ap'])
def test_purification_order_changes_only_what_it_should(clip_model, order):
    query_maps, transition = _pipeline_inputs()
    q2c = torch.arange(4)
    images = torch.randn(1, 3, GRID[0] * PATCH, GRID[1] * PATCH)
    text = F.normalize(torch.randn(4, 32), dim=-1)
    common = dict(rp_threshold=0.15, ap_threshold=0.7)
    args = (query_maps, q2c, [0, 1, 2, 3], transition)
    kwargs = dict(images=images, patch_size=PATCH,
                  encode_image=clip_model.encode_image,
                  class_embeddings=text)
    refined = FreeCPWindowPipeline(purification='none', **common)(
        *args, **kwargs)
    out = FreeCPWindowPipeline(purification=order, crop_size=64, **common)(
        *args, **kwargs)
    alive = out.flatten(2).amax(-1)[0] > 0
    # a surviving class is exactly its refined map; a dropped one is zero
    for c in range(4):
        assert torch.equal(out[0, c], refined[0, c] if alive[c]
                           else torch.zeros(GRID))
    assert alive[2]                      # the lone class always survives
    if order == 'none':
        assert alive.all()
    if 'rp' in order:
        assert not alive[3]              # the redundant class is removed
    if 'ap' in order:
        assert alive[0] != alive[1]      # exactly one of the ambiguous pair
    else:
        assert alive[0] and alive[1]


def test_pipeline_option_errors():
    with pytest.raises(OVSSConfigError, match='purification'):
        FreeCPWindowPipeline(purification='rp_rp')
    with pytest.raises(OVSSConfigError, match='rp_metric'):
        FreeCPWindowPipeline(rp_metric='dice')
    query_maps, transition = _pipeline_inputs()
    with pytest.raises(OVSSConfigError, match='encode_image'):
        FreeCPWindowPipeline(purification='ap')(query_maps, torch.arange(4),
                                                [0, 1, 2, 3], transition)


def test_hole_boxes_and_spoiled_groups(clip_model):
    ring = _blob(1, 5, 1, 5)
    ring[2, 2] = 0  # a one-patch hole: its contour box is (1, 1, 4, 4)
    maps = torch.stack([ring, 0.9 * ring, _blob(0, 1, 7, 8)])[None]
    keep = torch.ones(1, 3, dtype=torch.bool)
    groups = ambiguity_groups(maps, keep, 0.7)
    images = torch.randn(1, 3, GRID[0] * PATCH, GRID[1] * PATCH)
    text = torch.randn(3, 32)
    kwargs = dict(crop_size=64)
    with torch.no_grad():
        tree = classify_group_crops(groups, maps, images, PATCH,
                                    clip_model.encode_image, text, **kwargs)
        outer = classify_group_crops(groups, maps, images, PATCH,
                                     clip_model.encode_image, text,
                                     include_holes=False, **kwargs)
    assert sorted(tree.boxes.tolist()) == [[1, 1, 4, 4], [1, 1, 5, 5]]
    assert outer.boxes.tolist() == [[1, 1, 5, 5]]
    assert (tree.winner >= 0).all() and (tree.winner <= 1).all()
    # a degenerate box keeps the group whole in 'window' mode, so its
    # other boxes need no crop at all
    spoiled = torch.stack([_blob(2, 5, 7, 8), 0.9 * _blob(2, 5, 7, 8),
                           _blob(0, 1, 0, 1)])[None]
    groups = ambiguity_groups(spoiled, keep, 0.7)
    with torch.no_grad():
        votes = classify_group_crops(groups, spoiled, images, PATCH,
                                     clip_model.encode_image, text,
                                     winner_sets_only=True, **kwargs)
    assert votes.degenerate.all() and (votes.winner == -1).all()
    new_keep, _ = eliminate_ambiguity(groups, votes, keep, GRID, 'window')
    assert torch.equal(new_keep, keep)


def test_paper_refinement_options_equal_direct_formula():
    """cam_normalization='none', box_mask=False and the raw affinity give
    the paper's Eq. 3, refined = M x SA (then per-class min-max)."""
    query_maps, _ = _pipeline_inputs()
    torch.manual_seed(3)
    n = GRID[0] * GRID[1]
    affinity = torch.rand(1, n, n)
    pipe = FreeCPWindowPipeline(purification='none', cam_normalization='none',
                                box_mask=False, affinity_normalize_rounds=0,
                                affinity_symmetrize=False, affinity_power=1)
    out = pipe(query_maps, torch.arange(4), [1, 2], affinity)
    direct = query_maps[0, [1, 2]].double().reshape(2, n) @ \
        affinity[0].double().T
    direct = direct.view(2, *GRID)
    low = direct.flatten(1).min(1)[0].view(2, 1, 1)
    high = direct.flatten(1).max(1)[0].view(2, 1, 1)
    # float32 n-term sums of non-negative products (relative n * eps of the
    # map's max), then divided by the map's range
    eps = torch.finfo(torch.float32).eps
    atol = float(4 * n * eps * (high / (high - low)).max())
    torch.testing.assert_close(out[0].double(), (direct - low) / (high - low),
                               atol=atol, rtol=0)
    # the authors' options differ from it only through those steps
    authors = FreeCPWindowPipeline(purification='none')
    assert not torch.allclose(authors(query_maps, torch.arange(4), [1, 2],
                                      affinity), out)


def test_crop_precision_names(monkeypatch):
    assert crop_dtype('model', 'cpu') is None
    assert crop_dtype('fp32', 'cpu') is torch.float32
    assert crop_dtype('fp16', 'cpu') is torch.float16
    assert crop_dtype('bf16', 'cuda') is torch.bfloat16
    # 'half': the authors' fp16 on CUDA; bf16 only on CPUs with bf16 units
    assert crop_dtype('half', torch.device('cuda', 0)) is torch.float16
    monkeypatch.setattr(crops_module, 'cpu_has_native_bf16', lambda: True)
    assert crop_dtype('half', 'cpu') is torch.bfloat16
    monkeypatch.setattr(crops_module, 'cpu_has_native_bf16', lambda: False)
    assert crop_dtype('half', 'cpu') is None
    monkeypatch.undo()
    # on the CPU 'half' follows precision='auto': AMX tiles, or bf16
    # matmuls measured faster than fp32 (AMD EPYC's AVX512-BF16; not the
    # Xeon whose AVX512-BF16 GEMM ran at 0.6 x fp32)
    from mmseg_ovss.clip import precision
    monkeypatch.setattr(precision, 'cpu_has_amx', lambda: False)
    monkeypatch.setattr(precision, '_mkldnn_bf16', lambda: True)
    for bf16_rate, expected in ((2.5, torch.bfloat16), (0.6, None)):
        monkeypatch.setattr(precision, 'matmul_rates', lambda *a, **k: {
            torch.float32: 100.0, torch.bfloat16: 100.0 * bf16_rate})
        precision._cpu_bf16_wins.cache_clear()
        try:
            assert crop_dtype('half', 'cpu') is expected
        finally:
            precision._cpu_bf16_wins.cache_clear()
    monkeypatch.setattr(precision, 'cpu_has_amx', lambda: True)
    assert crop_dtype('half', 'cpu') is torch.bfloat16
    # a 16-bit model keeps its own dtype
    assert crop_dtype('half', 'cpu', torch.bfloat16) is None
    assert crop_dtype('half', 'mps') is None
    # a 16-bit model keeps its own dtype
    assert crop_dtype('half', 'cuda', torch.float16) is None
    assert crop_dtype('half', 'cuda', torch.bfloat16) is None
    with pytest.raises(OVSSConfigError, match='crop_precision'):
        crop_dtype('int8', 'cpu')


def test_winner_sets_only_stops_early_with_the_same_outcome(clip_model):
    """'window' elimination reads only who wins a box: classifying a group's
    boxes in rounds until every member has won gives the same result as
    classifying every box, with fewer crops on noisy (holed) maps."""
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 2, *GRID, generator=gen)   # noise: many holes
    keep = torch.ones(3, 2, dtype=torch.bool)
    groups = ambiguity_groups(maps, keep, 0.0)       # one pair per window
    images = torch.randn(3, 3, GRID[0] * PATCH, GRID[1] * PATCH,
                         generator=gen)
    text = torch.randn(2, 32, generator=gen)
    with torch.no_grad():
        full = classify_group_crops(groups, maps, images, PATCH,
                                    clip_model.encode_image, text,
                                    crop_size=64)
        fast = classify_group_crops(groups, maps, images, PATCH,
                                    clip_model.encode_image, text,
                                    crop_size=64, winner_sets_only=True,
                                    first_round=1)
    assert torch.equal(fast.boxes, full.boxes)
    done = fast.winner >= 0
    assert 0 < done.sum() < (full.winner >= 0).sum()
    assert torch.equal(fast.winner[done], full.winner[done])
    for votes in (full, fast):
        assert len(votes.group.unique()) == 3
    # a group whose boxes all go to one member is classified completely
    # (its other member is dropped) ...
    fast_votes = [fast.winner[fast.group == g] for g in range(3)]
    full_votes = [full.winner[full.group == g] for g in range(3)]
    complete = [g for g in range(3) if (fast_votes[g] >= 0).all()
                and len(full_votes[g].unique()) == 1]
    # ... while a group whose members both won stops early
    early = [g for g in range(3) if (fast_votes[g] < 0).any()]
    assert complete and early
    assert torch.equal(
        eliminate_ambiguity(groups, fast, keep, GRID, 'window')[0],
        eliminate_ambiguity(groups, full, keep, GRID, 'window')[0])
