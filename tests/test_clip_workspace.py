"""Per-thread scratch buffers of the CPU inference path
(``mmseg_ovss.clip.workspace``): reused from call to call, never seen by a
caller."""
import threading

import pytest
import torch
from open_clip.transformer import QuickGELU, ResidualAttentionBlock

from mmseg_ovss.clip import attention
from mmseg_ovss.clip.attention import (block_forward,
                                       block_forward_with_attention,
                                       head_reduction, mlp_forward,
                                       project_qkv)
from mmseg_ovss.clip.cpu_linear import set_cpu_fp32_linear
from mmseg_ovss.clip.workspace import (release_workspace, workspace,
                                       workspace_bytes)
from mmseg_ovss.testing.direct import assert_fp32_close

WIDTH, HEADS, TOKENS = 32, 4, 9


@pytest.fixture(autouse=True)
def fresh_workspace():
    # the workspace serves the BLAS products; with oneDNN's fp32 linear
    # (the default on non-Intel CPUs) the projections make new tensors
    set_cpu_fp32_linear('blas')
    release_workspace()
    yield
    release_workspace()
    set_cpu_fp32_linear(None)


def make_block() -> ResidualAttentionBlock:
    torch.manual_seed(0)
    # QuickGELU, as OpenAI's CLIP: the MLP then uses a gate buffer too
    return ResidualAttentionBlock(WIDTH, HEADS, act_layer=QuickGELU,
                                  batch_first=True).eval()


def test_buffers_are_reused_grown_and_released():
    first = workspace('a', (4, 5), torch.float32, 'cpu')
    smaller = workspace('a', (2, 3), torch.float32, 'cpu')
    assert smaller.data_ptr() == first.data_ptr()
    assert smaller.shape == (2, 3) and smaller.is_contiguous()
    other = workspace('b', (4, 5), torch.float32, 'cpu')
    half = workspace('a', (4, 5), torch.bfloat16, 'cpu')
    assert len({first.data_ptr(), other.data_ptr(), half.data_ptr()}) == 3
    larger = workspace('a', (6, 5), torch.float32, 'cpu')
    assert larger.shape == (6, 5)
    assert workspace_bytes() == 4 * 30 + 4 * 20 + 2 * 20
    release_workspace()
    assert workspace_bytes() == 0


def test_buffers_are_per_thread():
    mine = workspace('a', (8,), torch.float32, 'cpu')
    seen = {}

    def other_thread():
        seen['ptr'] = workspace('a', (8,), torch.float32, 'cpu').data_ptr()
        seen['bytes'] = workspace_bytes()

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen['ptr'] != mine.data_ptr() and seen['bytes'] == 32


@torch.no_grad()
def test_results_do_not_alias_the_scratch():
    """A result kept from one call is unchanged by the next call, which
    reuses the same qkv, hidden and gate buffers."""
    block = make_block()
    x1, x2 = torch.randn(2, 3, TOKENS, WIDTH)
    kept = block_forward(block, x1)
    kept_mlp = mlp_forward(block.mlp, x1)
    kept_attn = block_forward_with_attention(
        block, x1, head_reduction('mean', HEADS))
    used = workspace_bytes()
    assert used > 0
    block_forward(block, x2)
    mlp_forward(block.mlp, x2)
    block_forward_with_attention(block, x2, head_reduction('mean', HEADS))
    assert workspace_bytes() == used  # the same buffers, not new ones
    # open_clip's own block and MLP on the first input
    assert_fp32_close(kept, block(x1), 2 * WIDTH + 2 * TOKENS + 5 * WIDTH)
    assert_fp32_close(kept_mlp, block.mlp(x1), 5 * WIDTH)
    assert_fp32_close(kept_attn[0], block(x1),
                      2 * WIDTH + 2 * TOKENS + 5 * WIDTH)


def test_qkv_scratch_only_without_autograd():
    block = make_block()
    x = torch.randn(3, TOKENS, WIDTH)
    with torch.no_grad():
        q, k, v = project_qkv(block, x, scratch=True)
        buffer = workspace('qkv', (3 * TOKENS, 3 * WIDTH), torch.float32,
                           'cpu')
        assert q.data_ptr() == buffer.data_ptr()
        fresh = project_qkv(block, x)  # no scratch asked for
        assert fresh[0].data_ptr() != buffer.data_ptr()
        assert torch.equal(fresh[0], q) and torch.equal(fresh[2], v)
    q, _, _ = project_qkv(block, x, scratch=True)  # the weights need grad
    assert q.requires_grad and q.data_ptr() != buffer.data_ptr()
    with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
        q, _, _ = project_qkv(block, x, scratch=True)
    assert q.dtype == torch.bfloat16  # autocast's own linear ran


@torch.no_grad()
def test_chunked_mlp_with_scratch_equals_the_module(monkeypatch):
    monkeypatch.setattr(attention, 'CPU_MLP_HIDDEN_ELEMENTS', 5 * 4 * WIDTH)
    block = make_block()
    for windows in (3, 1, 4):  # the kept buffers are reused and grown
        x = torch.randn(windows, TOKENS, WIDTH)
        assert_fp32_close(mlp_forward(block.mlp, x), block.mlp(x),
                          5 * WIDTH)
