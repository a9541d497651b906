"""``SegLogitsStore``: the stored ``seg_logits`` of one image, filled band
by band; a band that is the whole result is kept without a copy."""
import torch

from mmseg_ovss.models.segmentors.clip_segmentor import SegLogitsStore


def scores(classes=4, height=10, width=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((classes, height, width), generator=generator)


def test_whole_band_is_kept_uncopied():
    full = scores()
    store = SegLogitsStore(4, (10, 7), max_mb=None)
    store.add(0, full)
    stored = store.result().data
    assert stored.data_ptr() == full.data_ptr()
    assert torch.equal(stored, scores())  # the values are untouched


def test_bands_fill_the_full_scores():
    full = scores()
    store = SegLogitsStore(4, (10, 7), max_mb=None)
    for top in range(0, 10, 3):
        store.add(top, full[:, top:top + 3].clone())
    stored = store.result().data
    assert stored.data_ptr() != full.data_ptr()
    assert torch.equal(stored, full)


def test_view_of_larger_storage_is_copied():
    # the first 4 of 6 channels: contiguous, but keeping it would keep all 6
    wider = scores(classes=6)
    part = wider[:4]
    assert part.is_contiguous()
    store = SegLogitsStore(4, (10, 7), max_mb=None)
    store.add(0, part)
    stored = store.result().data
    assert stored.untyped_storage().nbytes() == stored.numel() * 4
    assert torch.equal(stored, wider[:4])


def test_non_contiguous_and_other_dtype_are_copied():
    full = scores()
    transposed = full.transpose(1, 2).contiguous().transpose(1, 2)
    store = SegLogitsStore(4, (10, 7), max_mb=None)
    store.add(0, transposed)
    stored = store.result().data
    assert stored.is_contiguous() and torch.equal(stored, full)
    store = SegLogitsStore(4, (10, 7), max_mb=None)
    store.add(0, full.double())
    stored = store.result().data
    assert stored.dtype == torch.float32
    assert torch.equal(stored, full.double().float())


def test_renormalised_whole_band_is_a_new_tensor():
    full = scores()
    kept = full.clone()
    store = SegLogitsStore(4, (10, 7), max_mb=None, renormalize=True)
    store.add(0, full)
    stored = store.result().data
    assert torch.equal(full, kept)  # the band handed over is not changed
    torch.testing.assert_close(stored, kept / kept.sum(0, keepdim=True))


def test_subsampled_and_empty_stores():
    full = scores(height=12, width=9)
    # 4 classes x 12 x 9 float32 = 1728 bytes; 500 bytes keep every 2nd
    store = SegLogitsStore(4, (12, 9), max_mb=500 / 2**20)
    assert store.stride == 2
    store.add(0, full)
    result = store.result()
    assert torch.equal(result.data, full[:, ::2, ::2])
    assert result.metainfo['stride'] == 2
    empty = SegLogitsStore(4, (12, 9), max_mb=0)
    empty.add(0, full)
    assert empty.result() is None and empty.data is None
