"""FLOPs (one multiply-add = 1) and parameters against hand counts.

Each module's count is worked out by hand from its shapes; the open_clip
attention block of the tiny CLIP is counted through its SDPA path, which
mmengine's analyser alone does not count.
"""
import json

import torch
import torch.nn.functional as F
from mmengine.analysis import get_model_complexity_info
from torch import nn

from mmseg_ovss.engine.complexity import model_complexity
from mmseg_ovss.testing.tiny_configs import tiny_segformer_config
from mmseg_ovss.testing.tools import load_tool


class _Parts(nn.Module):
    """A Linear, a Conv2d, an einsum, a bmm and an SDPA on small tensors."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.linear = nn.Linear(4, 6)

    def forward(self, x):
        y = self.conv(x)                                # (1, 4, 6, 6)
        tokens = y.flatten(2).transpose(1, 2)           # (1, 36, 4)
        z = self.linear(tokens)                         # (1, 36, 6)
        q = z.view(1, 36, 2, 3).transpose(1, 2)         # (1, 2, 36, 3)
        k = q[:, :, :10]                                # (1, 2, 10, 3)
        v = torch.cat([k, k], dim=-1)                   # (1, 2, 10, 6)
        a = F.scaled_dot_product_attention(q, k, v)     # (1, 2, 36, 6)
        e = torch.einsum('bqd,bkd->bqk', z, z[:, :5])   # (1, 36, 5)
        m = torch.bmm(e, z[:, :5])                      # (1, 36, 6)
        return a, m


def test_parts_match_the_hand_count():
    model = _Parts()
    result = model_complexity(model, torch.rand(1, 3, 6, 6))
    conv = 4 * 3 * 3 * 3 * 36          # out x in x kh x kw x positions
    linear = 36 * 4 * 6
    sdpa = 2 * 36 * 10 * (3 + 6)       # heads x L x S x (E + Ev)
    einsum = 36 * 5 * 6
    bmm = 36 * 5 * 6
    assert result['per_module']['conv']['flops'] == conv
    assert result['per_module']['linear']['flops'] == linear
    assert result['flops'] == conv + linear + sdpa + einsum + bmm
    assert result['by_operator']['scaled_dot_product_attention'] == sdpa
    assert result['per_module']['(own)']['flops'] == sdpa + einsum + bmm
    assert result['params'] == result['learnable'] == \
        (4 * 27 + 4) + (4 * 6 + 6)


def test_mmengine_total_agrees_without_attention():
    """On operators mmengine counts itself, the total is its
    get_model_complexity_info's."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(),
                          nn.Conv2d(8, 4, 1), nn.Flatten(),
                          nn.Linear(4 * 7 * 7, 10))
    inputs = torch.rand(2, 3, 16, 16)
    ours = model_complexity(model, inputs)
    theirs = get_model_complexity_info(model, inputs=(inputs, ),
                                       show_table=False, show_arch=False)
    assert ours['flops'] == theirs['flops']
    by_hand = 2 * (8 * 27 * 49 + 4 * 8 * 49 + 196 * 10)
    assert ours['flops'] == by_hand and ours['flops_per_image'] == by_hand / 2
    assert 'relu' in ours['skipped_ops'] or 'aten::relu' in str(
        ours['skipped_ops']) or ours['skipped_ops'] == {}


def test_open_clip_attention_block_by_hand():
    """One residual attention block of the tiny ViT-16 (width 64, 4 heads,
    MLP ratio 4) on N tokens: in-projection N*64*192, q @ k^T and
    weights @ v 2*N*N*64, out-projection N*64*64, MLP 2*N*64*256, two
    LayerNorms 5*N*64 each (fvcore's norm cost)."""
    from mmseg_ovss.testing.tiny_clip import build_tiny_clip
    block = build_tiny_clip('ovss-tiny-ViT-16').visual.transformer \
        .resblocks[0]
    width, tokens, batch = 64, 17, 2
    result = model_complexity(block, torch.rand(batch, tokens, width))
    per_image = (tokens * width * 3 * width + 2 * tokens * tokens * width +
                 tokens * width * width + 2 * tokens * width * 4 * width +
                 2 * 5 * tokens * width)
    assert result['flops'] == batch * per_image
    assert result['flops_per_image'] == per_image


def test_tool_on_the_tiny_segformer(tmp_path, repo_root):
    """The tool counts a config's model; the decode head and backbone rows
    add up to the total."""
    config = tmp_path / 'tiny.py'
    config.write_text(tiny_segformer_config(
        'voc21', 21, "dict(type='LoadCheckedAnnotations')"))
    out = tmp_path / 'complexity.json'
    tool = load_tool('analysis/model_complexity')
    result = tool.main([str(config), '--shape', '64', '64', '--out', str(out),
                        '--quiet'])
    saved = json.loads(out.read_text())
    assert saved['flops'] == result['flops'] > 0
    modules = result['per_module']
    assert set(modules) >= {'backbone', 'decode_head'}
    assert sum(m['flops'] for m in modules.values()) == result['flops']
    # the head's last 1x1 conv: 8 channels -> 21 classes at 1/4 resolution
    assert result['by_operator']['conv'] >= 21 * 8 * 16 * 16
    assert result['params'] == sum(m['params'] for m in modules.values())


def test_dispatch_counter_gives_the_same_hand_count():
    """The untraced counter (used when a forward cannot be traced) counts
    the same products; it charges each top-level child what runs inside
    it."""
    model = _Parts()
    result = model_complexity(model, torch.rand(1, 3, 6, 6),
                              counter='dispatch')
    assert result['counter'] == 'dispatch'
    conv, linear = 4 * 3 * 3 * 3 * 36, 36 * 4 * 6
    sdpa, einsum, bmm = 2 * 36 * 10 * (3 + 6), 36 * 5 * 6, 36 * 5 * 6
    assert result['flops'] == conv + linear + sdpa + einsum + bmm
    assert result['per_module']['conv']['flops'] == conv
    assert result['per_module']['linear']['flops'] == linear
    assert result['per_module']['(own)']['flops'] == sdpa + einsum + bmm
