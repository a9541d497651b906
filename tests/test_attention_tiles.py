"""Captured attention formed in tiles of windows and heads on the CPU
(``score_tiles``, ``HeadReduction``): the weights, their head mean or one
head, and the block output of a direct float64 computation, with masks
that differ per window and per head."""
import pytest
import torch
from open_clip.transformer import ResidualAttentionBlock

from mmseg_ovss.clip import attention
from mmseg_ovss.clip.attention import (HeadReduction,
                                       block_forward_with_attention,
                                       head_reduction, score_tiles)
from mmseg_ovss.testing.direct import (assert_fp32_close, attention_heads,
                                       merge_heads)
from mmseg_ovss.utils.errors import OVSSConfigError

WIDTH, HEADS, TOKENS, WINDOWS = 32, 4, 9, 3
D = WIDTH // HEADS


def make_block() -> ResidualAttentionBlock:
    torch.manual_seed(0)
    return ResidualAttentionBlock(WIDTH, HEADS, batch_first=True).eval()


def masks():
    generator = torch.Generator().manual_seed(1)
    per_head = torch.randn((WINDOWS, HEADS, TOKENS, TOKENS),
                           generator=generator)
    keep = torch.rand((HEADS, TOKENS, TOKENS), generator=generator) > 0.4
    keep[..., 0] = True  # every query sees a key
    return {None: None, 'additive': per_head, 'bool': keep}


def direct(block, x, mask):
    """softmax(q k^T / sqrt(d) + mask) in float64, and the block output."""
    q, k, v = (t.double() for t in attention_heads(block, block.ln_1(x)))
    scores = q @ k.transpose(-2, -1) / D ** 0.5
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float('-inf'))
    elif mask is not None:
        scores = scores + mask.double()
    weights = scores.softmax(-1)
    attended = merge_heads(block, (weights @ v).float())
    y = x + attended
    return weights, y + block.mlp(block.ln_2(y))


@pytest.mark.parametrize('heads_per_tile', [1, 3, HEADS])
def test_score_tiles(monkeypatch, heads_per_tile):
    monkeypatch.setattr(attention, 'CPU_SCORE_ELEMENTS',
                        heads_per_tile * TOKENS * TOKENS)
    q = torch.zeros(WINDOWS, HEADS, TOKENS, D)
    # a group of heads of one window, or whole windows when they fit
    expected = (1, heads_per_tile) if heads_per_tile < HEADS else (1, HEADS)
    assert score_tiles(q) == expected
    monkeypatch.setattr(attention, 'CPU_SCORE_ELEMENTS',
                        2 * HEADS * TOKENS * TOKENS)
    assert score_tiles(q) == (2, HEADS)
    monkeypatch.setattr(attention, 'CPU_SCORE_ELEMENTS', 1)
    assert score_tiles(q) == (1, 1)


@torch.no_grad()
@pytest.mark.parametrize('heads_per_tile', [1, 3, 2 * HEADS])
@pytest.mark.parametrize('mask_kind', [None, 'additive', 'bool'])
@pytest.mark.parametrize('kept', [None, 'mean', -1])
def test_tiles_equal_the_direct_attention(monkeypatch, heads_per_tile,
                                          mask_kind, kept):
    """3 heads per tile leaves a last tile of 1 head; ``2 * HEADS`` fits
    two windows per tile and leaves a last tile of one window."""
    monkeypatch.setattr(attention, 'CPU_SCORE_ELEMENTS',
                        heads_per_tile * TOKENS * TOKENS)
    block = make_block()
    x = torch.randn(WINDOWS, TOKENS, WIDTH)
    mask = masks()[mask_kind]
    weights, expected = direct(block, x, mask)
    y, captured = block_forward_with_attention(
        block, x, head_reduction(kept, HEADS), attn_mask=mask)
    if kept == 'mean':
        weights = weights.mean(1, keepdim=True)
    elif kept is not None:
        weights = weights[:, kept:]
    assert captured.dtype == torch.float32
    assert captured.shape == weights.shape
    # in_proj (WIDTH terms), q k^T (D), softmax row (TOKENS), head mean
    assert_fp32_close(captured, weights.float(),
                      WIDTH + D + TOKENS + HEADS)
    # and through out_proj, the residual and the MLP (4 WIDTH + WIDTH)
    assert_fp32_close(y, expected, 2 * WIDTH + D + 2 * TOKENS + 5 * WIDTH)


@torch.no_grad()
@pytest.mark.parametrize('kept', [None, 'mean', 2])
def test_tiles_equal_the_windowed_path(monkeypatch, kept):
    """One head per tile against the autograd-safe path, which forms whole
    windows and reduces them with ``HeadReduction.__call__``."""
    block = make_block()
    x = torch.randn(WINDOWS, TOKENS, WIDTH)
    reduction = head_reduction(kept, HEADS)
    whole = block_forward_with_attention(
        block, x, lambda weights: reduction(weights))
    monkeypatch.setattr(attention, 'CPU_SCORE_ELEMENTS', 1)
    tiled = block_forward_with_attention(block, x, reduction)
    assert_fp32_close(tiled[0], whole[0], 2 * WIDTH + D + TOKENS)
    assert_fp32_close(tiled[1], whole[1], HEADS)


def test_autograd_takes_the_windowed_path(monkeypatch):
    """With a gradient to record the tiles' in-place products are not
    used; the gradient reaches the input."""
    monkeypatch.setattr(attention, 'CPU_SCORE_ELEMENTS', 1)
    block = make_block()
    x = torch.randn(WINDOWS, TOKENS, WIDTH, requires_grad=True)
    y, captured = block_forward_with_attention(
        block, x, head_reduction('mean', HEADS))
    (y.sum() + captured.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        expected = direct(block, x.detach(), None)[0].mean(1, keepdim=True)
    assert_fp32_close(captured.detach(), expected.float(),
                      WIDTH + D + TOKENS + HEADS)


def test_head_reduction_checks_its_argument():
    for bad in (HEADS, -HEADS - 1, 'max', True, 1.5):
        with pytest.raises(OVSSConfigError, match='attention_heads'):
            HeadReduction(bad, HEADS)
