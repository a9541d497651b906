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


def _tiny_cliprc_with_bank(folder):
    from mmseg_ovss.clip.text_bank import resolve_bank_dir
    model = build_tiny_cliprc('cliprc')
    model.text_encoder.text_bank_dir = resolve_bank_dir(folder)
    model.text_encoder._bank = None
    return model


def test_count_text_traces_with_an_empty_text_bank(tmp_path):
    """The jit trace never opens the bank (its digest reads tensor bytes,
    which a trace cannot): counted by 'jit', the text tower included."""
    model = _tiny_cliprc_with_bank(tmp_path)
    result = model_complexity(model, torch.randn(1, 3, 64, 64),
                              count_text=True, counter='jit')
    assert result['counter'] == 'jit'
    assert result['per_module']['text_encoder']['flops'] > 0
    assert model.text_encoder.text_bank_dir == tmp_path  # restored


def test_count_text_runs_the_tower_with_a_filled_text_bank(tmp_path):
    """``count_text`` counts the text tower even when its bank on disk
    (``text_bank='auto'``, the default) holds every prompt: the bank is off
    for the count and back on afterwards."""
    inputs = torch.randn(1, 3, 64, 64)
    reference = model_complexity(_tiny_cliprc_with_bank(None), inputs,
                                 count_text=True)
    model = _tiny_cliprc_with_bank(tmp_path)
    model.text_inputs()  # every prompt into the bank
    assert list(tmp_path.glob('*.pt'))
    model.text_encoder.clear_cache()
    result = model_complexity(model, inputs, count_text=True)
    text_flops = result['per_module']['text_encoder']['flops']
    assert text_flops > 0
    assert text_flops == reference['per_module']['text_encoder']['flops']
    assert result['counter'] == reference['counter']
    assert model.text_encoder.text_bank() is not None
