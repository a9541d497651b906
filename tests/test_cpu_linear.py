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
