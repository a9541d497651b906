"""The fp32 CPU GEMM of the inference path (``mmseg_ovss.clip.cpu_linear``):
oneDNN or BLAS, both within fp32's summation bound of the exact product;
chosen per CPU vendor, by the environment or by a call; ``F.linear``
wherever a gradient, autocast or a JIT trace needs it."""
import pytest
import torch

from mmseg_ovss.clip import cpu_linear
from mmseg_ovss.clip.cpu_linear import (ENVIRONMENT_VARIABLE, linear,
                                        resolved_backend, set_cpu_fp32_linear,
                                        uses_onednn)
from mmseg_ovss.engine.complexity import (DispatchFlopCounter,
                                          measure_matmul_rate)
from mmseg_ovss.utils.errors import OVSSConfigError

EPS32 = torch.finfo(torch.float32).eps
ONEDNN = cpu_linear._onednn_linear_available()


@pytest.fixture(autouse=True)
def default_backend(monkeypatch):
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    set_cpu_fp32_linear(None)
    yield
    set_cpu_fp32_linear(None)


def assert_within_summation_bound(got, x, weight, bias):
    """|fl(x W^T + b) - (x W^T + b)| <= (K + 1) eps (|x| |W|^T + |b|)
    elementwise, for any order of the K + 1 additions (the classical
    bound on a floating-point dot product)."""
    x64, w64 = x.double(), weight.double()
    exact = x64 @ w64.t()
    scale = x64.abs() @ w64.abs().t()
    if bias is not None:
        exact = exact + bias.double()
        scale = scale + bias.double().abs()
    bound = (x.shape[-1] + 1) * EPS32 * scale
    assert got.dtype == torch.float32 and got.shape == exact.shape
    assert bool(((got.double() - exact).abs() <= bound).all())


@pytest.mark.parametrize('backend', ['blas', 'onednn'])
@pytest.mark.parametrize('with_bias', [True, False])
@torch.no_grad()
def test_both_kernels_are_fp32_exact_products(backend, with_bias):
    if backend == 'onednn' and not ONEDNN:
        pytest.skip('this PyTorch has no oneDNN linear kernel')
    set_cpu_fp32_linear(backend)
    assert resolved_backend() == backend
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 96, generator=generator)
    bias = torch.randn(48, generator=generator) if with_bias else None
    batched = torch.randn(3, 7, 96, generator=generator)
    # a transposed (non-contiguous) input as well
    strided = torch.randn(96, 5, generator=generator).t()
    for x in (batched, strided):
        got = linear(x, weight, bias)
        assert_within_summation_bound(got, x, weight, bias)
        assert uses_onednn(x, weight) == (backend == 'onednn')


@pytest.mark.parametrize('vendor, expected', [('AuthenticAMD', 'onednn'),
                                              ('HygonGenuine', 'onednn'),
                                              ('GenuineIntel', 'blas'),
                                              ('', 'blas')])
def test_auto_takes_onednn_off_intel_cpus(monkeypatch, vendor, expected):
    monkeypatch.setattr(cpu_linear, 'cpu_vendor', lambda: vendor)
    monkeypatch.setattr(cpu_linear, '_onednn_linear_available', lambda: True)
    set_cpu_fp32_linear('auto')
    assert resolved_backend() == expected


def test_environment_variable_and_call_choose_the_backend(monkeypatch):
    monkeypatch.setattr(cpu_linear, 'cpu_vendor', lambda: 'AuthenticAMD')
    monkeypatch.setattr(cpu_linear, '_onednn_linear_available', lambda: True)
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, 'blas')
    set_cpu_fp32_linear(None)
    assert resolved_backend() == 'blas'
    set_cpu_fp32_linear('onednn')  # a call wins over the environment
    assert resolved_backend() == 'onednn'
    monkeypatch.setattr(cpu_linear, '_onednn_linear_available', lambda: False)
    set_cpu_fp32_linear('onednn')
    assert resolved_backend() == 'blas'  # not built in: BLAS


def test_bad_choices_name_the_setting_and_the_options(monkeypatch):
    with pytest.raises(OVSSConfigError, match="cpu_fp32_linear='mkl'"):
        set_cpu_fp32_linear('mkl')
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, 'fast')
    set_cpu_fp32_linear(None)
    with pytest.raises(OVSSConfigError,
                       match=f"{ENVIRONMENT_VARIABLE}='fast'.*'onednn'"):
        resolved_backend()


@pytest.mark.skipif(not ONEDNN, reason='no oneDNN linear kernel')
def test_gradients_autocast_traces_and_other_dtypes_use_f_linear(
        monkeypatch):
    set_cpu_fp32_linear('onednn')
    weight = torch.randn(4, 6, requires_grad=True)
    x = torch.randn(2, 6)
    assert not uses_onednn(x, weight)  # a gradient for the weight
    out = linear(x, weight)
    out.sum().backward()
    torch.testing.assert_close(weight.grad, x.sum(0).expand(4, 6))
    with torch.no_grad():
        assert uses_onednn(x, weight)
        assert not uses_onednn(x.bfloat16(), weight.bfloat16())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert not uses_onednn(x, weight)
        monkeypatch.setattr(torch.jit, 'is_tracing', lambda: True)
        assert not uses_onednn(x, weight)


@pytest.mark.skipif(not ONEDNN, reason='no oneDNN linear kernel')
@torch.no_grad()
def test_flops_and_matmul_rate_follow_the_kernel():
    set_cpu_fp32_linear('onednn')
    x, weight, bias = torch.randn(5, 3, 8), torch.randn(6, 8), torch.randn(6)
    with DispatchFlopCounter() as counter:
        linear(x, weight, bias)
    assert counter.total == 5 * 3 * 8 * 6
    assert counter.by_operator == {'_linear_pointwise': 5 * 3 * 8 * 6}
    rate = measure_matmul_rate(torch.float32, (16, 8, 12), repeats=1,
                               min_seconds=0.0)
    assert rate['kernel'] == 'onednn' and rate['gflop_per_s'] > 0
    set_cpu_fp32_linear('blas')
    assert measure_matmul_rate(torch.float32, (16, 8, 12), repeats=1,
                               min_seconds=0.0)['kernel'] == 'blas'
    assert measure_matmul_rate(torch.bfloat16, (16, 8, 12), repeats=1,
                               min_seconds=0.0)['kernel'] == 'default'


@pytest.mark.skipif(not ONEDNN, reason='no oneDNN linear kernel')
@torch.no_grad()
def test_onednn_packs_a_weight_once_and_again_after_it_changes():
    """The packed layout is made on first use and reused; every way a
    weight's values change (in-place copy, ``load_state_dict``, ``.data``)
    is seen, and the products follow the new values."""
    set_cpu_fp32_linear('onednn')
    cpu_linear.release_packed_weights()
    generator = torch.Generator().manual_seed(3)
    layer = torch.nn.Linear(96, 40)
    x = torch.randn(9, 96, generator=generator)
    first = cpu_linear.packed_weight(layer.weight)
    assert cpu_linear.packed_weight(layer.weight) is first
    assert cpu_linear.packed_weight_bytes() >= 40 * 96 * 4
    assert_within_summation_bound(linear(x, layer.weight, layer.bias), x,
                                  layer.weight, layer.bias)
    changes = [
        lambda: layer.weight.copy_(torch.randn(40, 96, generator=generator)),
        lambda: layer.load_state_dict(
            {'weight': torch.randn(40, 96, generator=generator),
             'bias': torch.randn(40, generator=generator)}),
        lambda: setattr(layer.weight, 'data',
                        torch.randn(40, 96, generator=generator)),
    ]
    for change in changes:
        before = cpu_linear.packed_weight(layer.weight)
        change()
        assert cpu_linear.packed_weight(layer.weight) is not before
        assert_within_summation_bound(linear(x, layer.weight, layer.bias),
                                      x, layer.weight, layer.bias)


@pytest.mark.skipif(not ONEDNN, reason='no oneDNN linear kernel')
@torch.no_grad()
def test_packed_weights_leave_with_their_weight_and_on_release():
    set_cpu_fp32_linear('onednn')
    cpu_linear.release_packed_weights()
    x = torch.randn(4, 32)
    kept = torch.nn.Parameter(torch.randn(16, 32))
    dropped = torch.nn.Parameter(torch.randn(16, 32))
    linear(x, kept)
    linear(x, dropped)
    assert len(cpu_linear._PACKED) == 2
    del dropped  # its entry goes with it (no stale id for a new tensor)
    assert len(cpu_linear._PACKED) == 1
    cpu_linear.release_packed_weights()
    assert cpu_linear.packed_weight_bytes() == 0
    assert_within_summation_bound(linear(x, kept), x, kept, None)
    # a slice of a weight (a new view at every call) is not packed
    rows = kept[:8]
    assert not cpu_linear.packed_weight(rows).is_mkldnn
    assert cpu_linear.packed_weight(kept).is_mkldnn
    assert_within_summation_bound(linear(x, rows), x, rows, None)
    assert len(cpu_linear._PACKED) == 1


@pytest.mark.skipif(not ONEDNN, reason='no oneDNN linear kernel')
def test_inference_mode_weights_run_unpacked():
    """A weight made under ``torch.inference_mode`` has no version counter
    to tell when it changes: it is used as it is, not cached."""
    set_cpu_fp32_linear('onednn')
    cpu_linear.release_packed_weights()
    with torch.inference_mode():
        weight = torch.nn.Parameter(torch.randn(12, 20))
        x = torch.randn(3, 20)
        got = linear(x, weight)
    assert len(cpu_linear._PACKED) == 0
    assert_within_summation_bound(got, x, weight, None)
