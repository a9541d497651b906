"""FLOP and parameter counts of a trainable segmentor, per module
(mmseg_ovss.engine.complexity; the operator counts against hand counts are
in test_complexity.py)."""
import torch

from mmseg_ovss.engine.complexity import model_complexity
from mmseg_ovss.testing.cliprc import build_tiny_cliprc


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
