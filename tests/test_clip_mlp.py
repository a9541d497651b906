"""The MLP of an open_clip block run for inference (``mlp_forward``): the
same numbers as the module, in row chunks on the CPU, QuickGELU in place."""
import math

import pytest
import torch
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import nn

from mmseg_ovss.clip import attention
from mmseg_ovss.clip.attention import block_forward, mlp_forward

WIDTH, HEADS = 32, 4


def make_block(act_layer, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    block = ResidualAttentionBlock(WIDTH, HEADS, mlp_ratio=4.0,
                                   act_layer=act_layer, batch_first=True)
    return block.eval().to(dtype)


def tolerance(reference: torch.Tensor, dtype: torch.dtype,
              reduction: int) -> float:
    """Two runs of the same products whose sums of ``reduction`` terms may
    be blocked differently: ``8 eps sqrt(n)`` of the output's scale in
    float32; in bfloat16 the hidden activations are stored rounded, so a
    differently blocked sum can move one of them by an ulp, which moves an
    output by a few ulps of its scale."""
    eps = torch.finfo(dtype).eps
    scale = float(reference.abs().max())
    if dtype == torch.bfloat16:
        return 4 * eps * scale
    return 8 * eps * math.sqrt(reduction) * scale


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 5 rows of the 4 x WIDTH hidden activations."""
    monkeypatch.setattr(attention, 'CPU_MLP_HIDDEN_ELEMENTS', 5 * 4 * WIDTH)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('act_layer', [QuickGELU, nn.GELU])
def test_chunked_rows_equal_the_module(small_chunks, act_layer, dtype):
    block = make_block(act_layer, dtype)
    x = torch.randn(3, 7, WIDTH).to(dtype)   # 21 rows: chunks 5,5,5,5,1
    with torch.no_grad():
        want = block.mlp(x)
        got = mlp_forward(block.mlp, x)
    assert got.shape == want.shape and got.dtype == want.dtype
    diff = float((got.float() - want.float()).abs().max())
    assert diff <= tolerance(want.float(), dtype, 4 * WIDTH)


def test_quick_gelu_in_place_is_the_module_activation():
    hidden = torch.randn(6, 4 * WIDTH)
    want = QuickGELU()(hidden)
    got = attention._activate_(QuickGELU(), hidden.clone())
    assert torch.equal(got, want)  # the same three operations, exactly


def test_with_autograd_the_module_runs_and_gradients_flow():
    block = make_block(QuickGELU)
    x = torch.randn(2, 5, WIDTH, requires_grad=True)
    out = mlp_forward(block.mlp, x)
    out.square().sum().backward()
    grad_x, grad_w = x.grad.clone(), block.mlp.c_fc.weight.grad.clone()
    x.grad = None
    block.zero_grad()
    block.mlp(x).square().sum().backward()
    assert torch.equal(grad_x, x.grad)
    assert torch.equal(grad_w, block.mlp.c_fc.weight.grad)


def test_under_autocast_the_module_runs():
    """Mixed precision (a frozen tower in AMP training or validation):
    the module's own call, whose layers autocast casts."""
    block = make_block(QuickGELU)
    block.requires_grad_(False)
    x = torch.randn(2, 5, WIDTH)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        want = block.mlp(x)
        got = mlp_forward(block.mlp, x)
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)


def test_another_mlp_module_runs_itself():
    mlp = nn.Sequential(nn.Linear(WIDTH, 64), nn.GELU(), nn.Linear(64, WIDTH))
    x = torch.randn(4, WIDTH)
    with torch.no_grad():
        assert torch.equal(mlp_forward(mlp, x), mlp(x))


def test_no_rows():
    block = make_block(QuickGELU)
    with torch.no_grad():
        out = mlp_forward(block.mlp, torch.zeros(0, 3, WIDTH))
    assert out.shape == (0, 3, WIDTH)


def test_block_forward_equals_open_clip_block(small_chunks):
    """The whole block written out (chunked MLP inside) against open_clip's
    own ``block(x)``."""
    block = make_block(QuickGELU)
    x = torch.randn(3, 9, WIDTH)
    with torch.no_grad():
        want = block(x)
        got = block_forward(block, x)
    diff = float((got - want).abs().max())
    assert diff <= tolerance(want, torch.float32, 4 * WIDTH)
