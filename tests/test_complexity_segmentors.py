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
    # the image tower runs through backbone.forward_tokens (prompt
    # tokens), which is charged to the backbone: what is left to the
    # segmentor itself is the small glue around its children
    assert per_module['(own)']['flops'] < 0.01 * per_module['backbone'][
        'flops']
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


def test_training_free_segmentor_counts_the_image_path_only(repo_root):
    """CLIPDenseSegmentor (SCLIP VOC21 at tiny size): without count_text
    the class embeddings are computed before the count, as for the
    trainable segmentors; with it the text tower is counted too."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg_ovss.testing.tiny_clip import register_tiny_clip_models
    register_tiny_clip_models()
    init_default_scope('mmseg')
    cfg = Config.fromfile(str(repo_root / 'configs/baselines/sclip_voc21.py'))
    cfg.model.clip.update(model_name='ovss-tiny-ViT-16', pretrained=None,
                          random_init=True)
    model = MODELS.build(cfg.model).eval()
    model.set_dataset_classes([f'class {i}' for i in range(21)])
    inputs = torch.randn(1, 3, 64, 64)
    image = model_complexity(model, inputs)
    assert image['per_module'].get('text_encoder', {}).get('flops', 0) == 0
    with_text = model_complexity(model, inputs, count_text=True)
    text = with_text['per_module']['text_encoder']['flops']
    assert text > 0
    # the image tower is the same count; the template and synonym means
    # of the embeddings add a little outside the text tower
    assert with_text['per_module']['backbone'] == image['per_module'][
        'backbone']
    assert image['flops'] + text <= with_text['flops'] <= \
        1.01 * (image['flops'] + text)
