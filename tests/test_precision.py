"""The precision switch of the dense CLIP path, its kernel report, the fused
attention and the device-side label rules of ``CLIPDenseSegmentor``.

Low-precision tolerances: bf16 keeps 8 significant bits, so each value it
stores is off by at most u = 2**-8 relative (unit roundoff); the kernels
accumulate in fp32, so the reductions add fp32 rounding only. Independent
storage roundings add up like a random walk: after S rounded stages a
result is off by about u * sqrt(S) relative.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import mmseg_ovss  # noqa: F401
import mmseg_ovss.clip.precision as precision
import mmseg_ovss.clip.attention as attention
from mmseg_ovss.clip.attention import (attention_values, block_forward,
                                       block_forward_with_attention,
                                       head_reduction, softmax_)
from mmseg_ovss.clip.strategies import build_dense_strategy
from mmseg_ovss.models.backbones import OpenCLIPViT
from mmseg_ovss.models.segmentors.clip_segmentor import label_histogram
from mmseg_ovss.testing.direct import assert_fp32_close
from mmseg_ovss.testing.labels import (assert_equal_where_decided,
                                       decided_pixels)
from mmseg_ovss.testing.tiny_clip import build_tiny_clip
from mmseg_ovss.utils.errors import OVSSConfigError

init_default_scope('mmseg')
U_BF16 = 2.0 ** -8
# stored (rounded) intermediates of one block: ln_1, q/k/v, the attention
# output, out_proj, the residual, ln_2, the MLP's hidden and its output
STAGES_PER_BLOCK = 9
TINY_BLOCKS, TINY_WIDTH = 6, 64
bf16_cpu = pytest.mark.skipif(
    not (precision.cpu_has_amx() or precision._mkldnn_bf16()),
    reason='this CPU has no bf16 matmul kernels')


@pytest.fixture(scope='module')
def clip_model():
    return build_tiny_clip('ovss-tiny-ViT-16', seed=0)


def block_of(clip_model, index=0):
    return clip_model.visual.transformer.resblocks[index]


# ---------------------------------------------------------------- kernels
def test_kernel_report_reads_torch_and_the_cpu_flags():
    report = precision.kernel_report('cpu')
    flags = set()
    try:
        with open('/proc/cpuinfo') as handle:
            line = next((ln for ln in handle if ln.startswith('flags')), '')
        flags = set(line.split(':', 1)[-1].split())
    except OSError:
        pass
    assert report.device == 'cpu'
    assert report.avx512_bf16 == ('avx512_bf16' in flags)
    assert report.amx_bf16 == ('amx_bf16' in flags)
    assert report.amx_tiles == torch._C._cpu._is_amx_tile_supported()
    assert report.mkldnn == (torch.backends.mkldnn.is_available()
                             and torch.backends.mkldnn.enabled)
    assert report.cpu_capability == torch.backends.cpu.get_cpu_capability()
    summary = report.summary()
    assert report.cpu_capability in summary and 'bf16 matmul' in summary
    assert report.as_dict()['avx512_bf16'] == report.avx512_bf16


def test_matmul_rates_are_measured_per_dtype():
    rates = precision.matmul_rates((torch.float32,), shape=(8, 16, 32),
                                   repeats=1)
    assert list(rates) == [torch.float32]
    assert rates[torch.float32] > 0 and math.isfinite(rates[torch.float32])


def test_precision_names_and_errors(monkeypatch):
    with pytest.raises(OVSSConfigError, match="'half'"):
        precision.check_precision('half')
    assert precision.compute_dtype('fp32', 'cpu') == torch.float32
    with pytest.raises(OVSSConfigError, match='fp16 on the CPU'):
        precision.compute_dtype('fp16', 'cpu')
    monkeypatch.setattr(precision, 'cpu_has_amx', lambda: False)
    monkeypatch.setattr(precision, '_mkldnn_bf16', lambda: False)
    with pytest.raises(OVSSConfigError, match='without bf16 matmul'):
        precision.compute_dtype('bf16', 'cpu')
    assert precision.compute_dtype('auto', 'cpu') == torch.float32
    monkeypatch.setattr(precision, 'cpu_has_amx', lambda: True)
    assert precision.compute_dtype('bf16', 'cpu') == torch.bfloat16
    assert precision.compute_dtype('auto', 'cpu') == torch.bfloat16


@pytest.mark.parametrize('bf16_rate, expected', [
    (2.0, torch.bfloat16), (1.0, torch.float32)])
def test_auto_measures_bf16_without_amx(monkeypatch, bf16_rate, expected):
    """Without AMX, 'auto' takes bf16 only where it measured faster."""
    monkeypatch.setattr(precision, 'cpu_has_amx', lambda: False)
    monkeypatch.setattr(precision, '_mkldnn_bf16', lambda: True)
    monkeypatch.setattr(precision, 'matmul_rates', lambda *a, **k: {
        torch.float32: 100.0, torch.bfloat16: 100.0 * bf16_rate})
    precision._cpu_bf16_wins.cache_clear()
    try:
        assert precision.compute_dtype('auto', 'cpu') == expected
    finally:
        precision._cpu_bf16_wins.cache_clear()


# ------------------------------------------------------- fused attention
def direct_block(block, x):
    """A pre-norm CLIP block written from its weights with explicit loops
    over heads (softmax(q k^T / sqrt(d)) v per head)."""
    attn = block.attn
    c, heads = x.shape[-1], attn.num_heads
    d = c // heads
    h = F.layer_norm(x, (c,), block.ln_1.weight, block.ln_1.bias,
                     block.ln_1.eps)
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q, k, v = (h @ w[i * c:(i + 1) * c].T + b[i * c:(i + 1) * c]
               for i in range(3))
    outs = []
    for head in range(heads):
        part = slice(head * d, (head + 1) * d)
        scores = torch.einsum('bnd,bmd->bnm', q[..., part],
                              k[..., part]) / math.sqrt(d)
        outs.append(torch.einsum('bnm,bmd->bnd', scores.softmax(-1),
                                 v[..., part]))
    y = x + torch.cat(outs, -1) @ attn.out_proj.weight.T + \
        attn.out_proj.bias
    return y + block.mlp(block.ln_2(y))


@torch.no_grad()
def test_fused_block_equals_the_direct_formula(clip_model):
    torch.manual_seed(0)
    x = torch.randn(2, 17, TINY_WIDTH)
    block = block_of(clip_model)
    expected = direct_block(block, x)
    # ln, in_proj (64), scores (16), attention x v (17), out_proj (64),
    # the MLP (64 + 256)
    terms = 64 + 16 + 17 + 64 + 64 + 256
    assert_fp32_close(block_forward(block, x), expected, terms)
    out, weights = block_forward_with_attention(block, x)
    assert_fp32_close(out, expected, terms)
    assert weights.shape == (2, 4, 17, 17)
    assert_fp32_close(weights.sum(-1), torch.ones(2, 4, 17), 17)


def test_in_place_softmax_equals_softmax_and_keeps_gradients():
    torch.manual_seed(0)
    scores = torch.randn(3, 5, 7)
    expected = scores.exp() / scores.exp().sum(-1, keepdim=True)
    out = softmax_(scores.clone())
    assert_fp32_close(out, expected, 7)
    assert torch.equal(out, scores.softmax(-1))
    leaf = scores.clone().requires_grad_(True)
    (softmax_(leaf * 1.0)[..., 0].sum()).backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


@torch.no_grad()
@pytest.mark.parametrize('name', ['Vanilla', 'SCLIP', 'ClearCLIP', 'NACLIP'])
def test_fused_strategy_attention_equals_its_weights_times_values(name):
    """attend() (fused SDPA) against the strategy's explicit W, times v
    with an einsum."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 1 + 12, 16) for _ in range(3))
    strategy = build_dense_strategy(name)
    weights = strategy.attention(q, k, (3, 4))
    expected = torch.einsum('bhnm,bhmd->bhnd', weights, v)
    fused = strategy.attend(q, k, v, (3, 4), None)
    assert_fp32_close(fused, expected, 2 * (16 + 13))


def _spy_sdpa(monkeypatch):
    calls = []
    fused = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].dtype)
        return fused(*args, **kwargs)
    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    return calls


@pytest.mark.parametrize('mask', [None, 'additive', 'bool'])
def test_bf16_attention_without_amx_is_explicit_per_window(monkeypatch,
                                                           mask):
    """bf16 inference on a CPU without AMX forms the weights a few windows
    at a time (here one window per block of scores); its error against
    the float64 formula on the same bf16 inputs: each score is stored in
    bf16 (off by u |s|, which moves a softmax weight by about 2 u |s|
    relative), each weight (u) and the output (u) too; the output is a
    convex combination of v."""
    calls = _spy_sdpa(monkeypatch)
    monkeypatch.setattr(attention, 'cpu_has_amx', lambda: False)
    monkeypatch.setattr(attention, 'CPU_SCORE_ELEMENTS', 4 * 9 * 9)
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 9, 16).bfloat16() for _ in range(3))
    bias = torch.randn(3, 1, 9, 9)
    masks = {None: None, 'additive': bias.bfloat16(),
             'bool': torch.rand(3, 1, 9, 9) > 0.3}
    masks['bool'][..., 0] = True       # every query sees a key
    given = masks[mask]
    scores = q.double() @ k.double().transpose(-2, -1) / 4.0
    if mask == 'additive':
        scores = scores + given.double()
    elif mask == 'bool':
        scores = scores.masked_fill(~given, float('-inf'))
    expected = scores.softmax(-1) @ v.double()
    with torch.no_grad():
        out = attention_values(q, k, v, given)
    assert calls == [] and out.dtype == torch.bfloat16
    finite = scores[scores.isfinite()].abs().max().item()
    bound = U_BF16 * (2 + 2 * finite) * v.double().abs().max().item()
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=bound)


def test_attention_values_keeps_sdpa_elsewhere(monkeypatch):
    """fp32, autograd, or AMX tiles: the fused kernel, same numbers."""
    calls = _spy_sdpa(monkeypatch)
    monkeypatch.setattr(attention, 'cpu_has_amx', lambda: False)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 16) for _ in range(3))
    with torch.no_grad():
        assert torch.equal(attention_values(q, k, v),
                           F.scaled_dot_product_attention(q, k, v))
    leaf = q.bfloat16().requires_grad_(True)
    attention_values(leaf, k.bfloat16(), v.bfloat16()).sum().backward()
    assert leaf.grad is not None
    monkeypatch.setattr(attention, 'cpu_has_amx', lambda: True)
    with torch.no_grad():
        attention_values(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert calls == [torch.float32, torch.float32, torch.bfloat16,
                     torch.bfloat16]


def test_head_mean_of_bf16_weights_accumulates_in_fp32():
    torch.manual_seed(0)
    weights = torch.rand(2, 12, 5, 5).bfloat16()
    mean = head_reduction('mean', 12)(weights)
    assert mean.dtype == torch.float32
    expected = sum(weights[:, h].float() for h in range(12)) / 12
    assert_fp32_close(mean[:, 0], expected, 12)
    one = head_reduction(3, 12)(weights)
    assert one.dtype == torch.float32 and torch.equal(
        one[:, 0], weights[:, 3].float())


# ------------------------------------------------------ bf16 against fp32
def relative_error(actual, expected):
    return ((actual - expected).norm() / expected.norm()).item()


@bf16_cpu
@torch.no_grad()
@pytest.mark.parametrize('name', ['SCLIP', 'GEM', 'NACLIP', 'MaskCLIP'])
def test_bf16_dense_path_agrees_with_fp32(clip_model, name):
    backbone = OpenCLIPViT(visual=clip_model.visual,
                           dense_strategy=name).eval()
    torch.manual_seed(1)
    images = torch.randn(3, 3, 64, 96)
    kwargs = dict(attention_layers=[1, 4], attention_heads='mean',
                  with_cls=True)
    exact = backbone.forward_dense(images, **kwargs)
    half = backbone.forward_dense(images, dtype=torch.bfloat16, **kwargs)
    assert half.patch_tokens.dtype == torch.float32
    assert half.encode_image.__self__.dtype == torch.bfloat16
    # embedding, the blocks, ln_post and proj
    stages = 2 + STAGES_PER_BLOCK * TINY_BLOCKS + 2
    tol = U_BF16 * math.sqrt(stages)
    assert relative_error(half.patch_tokens, exact.patch_tokens) < tol
    assert relative_error(half.cls_token, exact.cls_token) < tol
    for layer in (1, 4):
        depth = 2 + STAGES_PER_BLOCK * layer + 3
        # probabilities in [0, 1]: an absolute bound at the largest one
        bound = U_BF16 * math.sqrt(depth) * exact.attn_weights[layer].max()
        err = (half.attn_weights[layer] - exact.attn_weights[layer]).abs()
        assert half.attn_weights[layer].dtype == torch.float32
        assert err.max() < bound
    # the fp32 path is the backbone itself, bit for bit
    again = backbone.forward_dense(images, dtype=torch.float32, **kwargs)
    assert torch.equal(again.patch_tokens, exact.patch_tokens)


MEAN, STD = [122.771, 116.746, 104.094], [68.501, 66.632, 70.323]


def build_segmentor(**kwargs):
    torch.manual_seed(0)
    cfg = dict(
        type='CLIPDenseSegmentor',
        clip=dict(model_name='ovss-tiny-ViT-16', random_init=True),
        backbone=dict(type='OpenCLIPViT', dense_strategy=dict(type='SCLIP')),
        text_encoder=dict(type='OpenCLIPTextEncoder', templates='single'),
        decode_head=dict(type='CosineSimilarityHead', logit_scale=40.0),
        data_preprocessor=dict(type='SegDataPreProcessor', mean=MEAN,
                               std=STD, bgr_to_rgb=True),
        test_cfg=dict(mode='slide', crop_size=(32, 32), stride=(16, 16)))
    cfg.update(kwargs)
    model = MODELS.build(cfg).eval()
    model.set_vocabulary(['background', 'cat', 'dog', 'grass', 'sky'])
    return model


def test_unknown_and_unsupported_precisions_are_refused():
    with pytest.raises(OVSSConfigError, match='precision'):
        build_segmentor(precision='int8')
    model = build_segmentor(precision='fp16')
    with pytest.raises(OVSSConfigError, match='fp16 on the CPU'):
        model.inference(torch.randn(1, 3, 32, 32), None)


@bf16_cpu
@torch.no_grad()
def test_bf16_segmentor_labels_agree_with_fp32():
    """One model at two precisions on generated images. The stitched window
    cosines (|cos| <= 1) move by at most 2 u sqrt(S) (twice the features'
    relative error); the class scores are a monotone map of them (softmax,
    one query per class), so a label can change only where fp32's top-two
    cosine margin is under twice the largest move."""
    model = build_segmentor()
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 48, 64, generator=generator)
    images = F.avg_pool2d(images, 5, 1, 2)  # smooth regions, not noise
    exact_cos = model.slide_inference(images, None)
    exact = model.inference(images, None)
    model.precision = 'bf16'
    assert model.dense_backbone(images.device).dtype == torch.bfloat16
    assert model.dense_backbone(images.device) is \
        model.backbone.cast_copy(torch.bfloat16, images.device)
    half_cos = model.slide_inference(images, None)
    half = model.inference(images, None)
    assert half.dtype == torch.float32 and half.shape == exact.shape
    stages = 2 + STAGES_PER_BLOCK * TINY_BLOCKS + 3
    moved = (half_cos - exact_cos).abs().max()
    assert moved < 2 * U_BF16 * math.sqrt(stages)
    decided = decided_pixels(exact_cos, 2 * moved, dim=1)
    assert_equal_where_decided(half.argmax(1), exact.argmax(1), decided,
                               min_fraction=0.5)
    model.precision = 'fp32'
    assert torch.equal(model.inference(images, None), exact)


# ------------------------------------------------- device-side label rules
def test_label_histogram_both_paths_count_each_label():
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (7, 9))
    expected = torch.tensor([(labels == c).sum() for c in range(6)])
    assert torch.equal(label_histogram(labels, 6), expected)
    counts = torch.zeros(6, dtype=torch.long).scatter_add_(
        0, labels.flatten(), torch.ones((), dtype=torch.long).expand(63))
    assert torch.equal(counts, expected)


def test_background_rules_without_boolean_indexing():
    model = build_segmentor(area_thd=0.3, prob_thd=0.5)
    vocab = model.vocabulary_embeddings()
    torch.manual_seed(0)
    scores = torch.rand(5, 6, 7)
    labels = model.threshold_labels(scores.clone(), vocab)
    for y in range(6):
        for x in range(7):
            column = scores[:, y, x]
            want = 0 if column.max() < 0.5 else int(column.argmax())
            assert int(labels[y, x]) == want
    area = torch.tensor([10., 1., 8., 3., 0.])
    keep = model._area_keep(area, vocab)
    foreground_total = 1 + 8 + 3
    assert keep.tolist() == [True] + [a > 0.3 * foreground_total
                                      for a in (1., 8., 3., 0.)]


def test_cast_copies_share_the_strategy_one_per_dtype(clip_model):
    backbone = OpenCLIPViT(visual=clip_model.visual,
                           dense_strategy='SCLIP').eval()
    bf16 = backbone.cast_copy(torch.bfloat16, 'cpu')
    fp16 = backbone.cast_copy(torch.float16, 'cpu')
    assert bf16.dtype == torch.bfloat16 and fp16.dtype == torch.float16
    assert bf16.dense_strategy is backbone.dense_strategy
    assert backbone.cast_copy(torch.bfloat16, 'cpu') is bf16
    assert backbone.cast_copy(torch.float16, 'cpu') is fp16
    assert not any(p.requires_grad for p in bf16.parameters())
    # the copies live outside the module tree: no extra parameters
    assert sum(p.numel() for p in backbone.parameters()) == \
        sum(p.numel() for p in clip_model.visual.parameters())
