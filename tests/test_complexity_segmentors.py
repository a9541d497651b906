"""FLOP and parameter counts (mmseg_ovss.engine.complexity).

Convention: one multiply-add is one FLOP (fvcore / mmengine). Each count is
checked against a hand count of the same module; the tool runs on a
config of the trainable segmentors.
"""

import torch
import torch.nn.functional as F
from torch import nn

from mmseg_ovss.engine.complexity import flop_analyzer, model_complexity
from mmseg_ovss.testing.cliprc import build_tiny_cliprc


class _LinearConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 5, bias=False)

    def forward(self, x):
        y = self.conv(x)                        # (1, 8, 6, 7)
        return self.fc(y.flatten(2).transpose(1, 2))


class _Attention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def _flops(module, *inputs):
    with torch.no_grad():
        return flop_analyzer(module.eval(), inputs).total()


def test_linear_and_convolution_by_hand():
    x = torch.randn(1, 3, 6, 7)
    conv = 8 * 3 * 3 * 3 * (6 * 7)          # out x in x kernel x positions
    linear = (6 * 7) * 8 * 5                 # tokens x in x out
    assert _flops(_LinearConv(), x) == conv + linear


def test_fused_attention_by_hand():
    q = torch.randn(2, 4, 10, 16)   # batch, heads, queries, dims
    k = torch.randn(2, 4, 7, 16)
    v = torch.randn(2, 4, 7, 12)
    # q @ k^T: 10 x 7 x 16; weights @ v: 10 x 7 x 12, per batch and head
    assert _flops(_Attention(), q, k, v) == 2 * 4 * 10 * 7 * (16 + 12)


def test_multihead_attention_fast_path_by_hand():
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()

    class Self(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    x = torch.randn(3, 9, 32)
    projections = 3 * 9 * 32 * 32 * 3        # q, k, v
    attention = 2 * 3 * 9 * 9 * 32           # q k^T and weights v (all heads)
    output = 3 * 9 * 32 * 32
    assert _flops(Self(), x) == projections + attention + output


def test_segmentor_complexity_splits_by_module():
    model = build_tiny_cliprc('cliprc')
    result = model_complexity(model, torch.randn(1, 3, 64, 64))
    per_module = result['per_module']
    assert {'backbone', 'decode_head'} <= set(per_module)
    assert result['flops'] == sum(m['flops'] for m in per_module.values())
    assert per_module['backbone']['flops'] > 0
    assert per_module['decode_head']['flops'] > 0
    learnable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert result['learnable'] == learnable
    assert result['params'] == sum(p.numel() for p in model.parameters())
    # the frozen CLIP image tower is counted but does not train
    assert per_module['backbone']['learnable'] < \
        per_module['backbone']['params']


def test_more_region_tokens_cost_more():
    """CLIP-RC Table 6's trend on the tiny model: every region token adds
    attention work in every block."""
    flops = []
    for tokens in (1, 4, 16):
        model = build_tiny_cliprc(
            'cliprc', region_bridge=dict(num_tokens=tokens))
        flops.append(model_complexity(model, torch.randn(1, 3, 128, 128))
                     ['flops'])
    assert flops[0] < flops[1] < flops[2]
