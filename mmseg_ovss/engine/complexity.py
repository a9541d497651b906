"""FLOPs and parameters of a segmentor's test-time forward.

Convention (fvcore's, which mmengine's analysis ports): **one fused
multiply-add is one FLOP**; a (m x k) @ (k x n) product costs m*k*n, a
convolution ``batch * prod(weight shape) * prod(output spatial size)``;
normalisations cost 4-5 per element, bilinear resizing 4 per output
element; element-wise operations (activations, additions, softmax) are not
counted (they are listed under ``skipped_ops``). Papers that quote GFLOPs of
ViT segmentors (CLIP-RC Table 6, DCP-CLIP / CAT-Seg Table II) use this
convention.

The count traces ``model._forward`` (mmseg's ``mode='tensor'``: backbone
and decode head, no post-processing) with mmengine's ``FlopAnalyzer`` (the
analyser behind ``mmengine.analysis.get_model_complexity_info``), to which
this module adds the operators mmengine does not count:
``aten::scaled_dot_product_attention`` (q @ k^T and attention @ v),
``aten::baddbmm`` (``nn.MultiheadAttention`` with a mask and weights),
``aten::_native_multi_head_attention`` (its inference fast path) and
bicubic resizing (position-embedding interpolation).

For a segmentor with a text tower (``OpenVocabEncoderDecoder``, the
training-free ``CLIPDenseSegmentor``) the class
embeddings are computed once before the count by default
(``count_text=False``): at inference a fixed vocabulary is encoded once and
cached, so the per-image cost is the image path. ``count_text=True`` counts
the text tower as part of the forward, with the encoder's cache and on-disk
text bank off for the count (neither may answer in the tower's place).
"""
import contextlib
import functools
from collections import Counter, OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import (bmm_flop_jit,
                                           elementwise_flop_counter,
                                           get_shape)
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from mmseg_ovss.engine.parameters import OWN, count_parameters


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``scaled_dot_product_attention(q, k, v)``: q (..., L, E), k (..., S,
    E), v (..., S, Ev): L*S*E for q @ k^T plus L*S*Ev for weights @ v per
    batch element (softmax and scaling are element-wise)."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = _prod(q[:-2])
    length, dim = q[-2], q[-1]
    source, value_dim = k[-2], v[-1]
    return batch * length * source * (dim + value_dim)


def baddbmm_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``baddbmm(input, batch1, batch2)``: the product of batch1 @ batch2
    (the addition is element-wise)."""
    return bmm_flop_jit(inputs[1:3], outputs)


def native_mha_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``_native_multi_head_attention(q, k, v, E, heads, qkv_w, ...)``: the
    q, k, v projections, q @ k^T, weights @ v and the output projection."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    dim = q[-1]
    length, source = q[-2], k[-2]
    batch = _prod(q[:-2])
    projections = batch * (length + 2 * source) * dim * dim
    attention = 2 * batch * length * source * dim
    output = batch * length * dim * dim
    return projections + attention + output


#: Operators counted in addition to mmengine's defaults.
EXTRA_FLOP_HANDLES = {
    'aten::scaled_dot_product_attention': sdpa_flop_jit,
    'aten::baddbmm': baddbmm_flop_jit,
    'aten::_native_multi_head_attention': native_mha_flop_jit,
    'aten::upsample_bicubic2d': elementwise_flop_counter(0, 16),
}


def flop_analyzer(model: nn.Module, inputs: tuple) -> FlopAnalyzer:
    """mmengine's ``FlopAnalyzer`` with :data:`EXTRA_FLOP_HANDLES`, quiet
    (skipped operators are reported by :func:`model_complexity`)."""
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(**EXTRA_FLOP_HANDLES)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    return analyzer


def _tensors(value) -> tuple:
    """The tensors of a nested output (tuples, lists, dicts, dataclasses,
    objects with tensor attributes), flattened for tracing."""
    if torch.is_tensor(value):
        return (value, )
    if isinstance(value, dict):
        return sum((_tensors(v) for v in value.values()), ())
    if isinstance(value, (list, tuple)):
        return sum((_tensors(v) for v in value), ())
    if hasattr(value, '__dict__'):
        return sum((_tensors(v) for v in vars(value).values()), ())
    return ()


#: entry points other than ``forward`` that segmentors call on a child
#: (``OpenCLIPViT.forward_tokens``: ZegCLIP / CLIP-RC run the image tower
#: with their prompt tokens through it)
ROUTED_METHODS = ('forward_tokens', )


@contextlib.contextmanager
def through_call(children: Dict[str, nn.Module]) -> Iterator[None]:
    """Route direct ``child.forward(...)`` calls, and those of
    :data:`ROUTED_METHODS`, through ``child(...)`` so that module hooks (the
    analyser's scopes, timers) see them; segmentors call
    ``self.decode_head.forward`` and ``self.backbone.forward_tokens``
    directly. Calls that already come through ``child(...)`` are left
    alone."""
    patched = []
    for child in children.values():
        if 'forward' in vars(child):
            continue  # patched by someone else: leave it
        original = child.forward
        depth = [0]

        def enter(module, args, _depth=depth):
            _depth[0] += 1

        def leave(module, args, output, _depth=depth):
            _depth[0] -= 1

        def routed(*args, _child=child, _original=original, _depth=depth,
                   **kwargs):
            if _depth[0]:
                return _original(*args, **kwargs)
            return nn.Module.__call__(_child, *args, **kwargs)

        def routed_method(*args, _child=child, _depth=depth, _method=None,
                          **kwargs):
            if _depth[0]:
                return _method(*args, **kwargs)
            # __call__ runs forward: the method stands in for it meanwhile
            routed_forward = vars(_child)['forward']
            _child.forward = _method
            try:
                return nn.Module.__call__(_child, *args, **kwargs)
            finally:
                _child.forward = routed_forward

        handles = (child.register_forward_pre_hook(enter),
                   child.register_forward_hook(leave, always_call=True))
        child.forward = routed
        methods = [name for name in ROUTED_METHODS
                   if callable(getattr(child, name, None))
                   and name not in vars(child)]
        for name in methods:
            setattr(child, name, functools.partial(
                routed_method, _method=getattr(child, name)))
        patched.append((child, handles, methods))
    try:
        yield
    finally:
        for child, handles, methods in patched:
            del child.forward
            for name in methods:
                delattr(child, name)
            for handle in handles:
                handle.remove()


#: segmentor methods that give the class embeddings of the active
#: vocabulary (computed once before a count without ``count_text``)
TEXT_METHODS = ('text_inputs', 'vocabulary_embeddings')


@contextlib.contextmanager
def tensor_forward(model: nn.Module,
                   count_text: bool = False) -> Iterator[None]:
    """Make ``model(inputs)`` the tensor forward ``model._forward(inputs)``
    with its outputs flattened to a tuple of tensors (traceable), top-level
    children called through their hooks, and (``count_text=False``) the
    class embeddings of the segmentor (:data:`TEXT_METHODS`) computed
    beforehand;
    with ``count_text`` the text encoder's cache and on-disk bank are off,
    so every sentence runs through the tower (restored afterwards)."""
    restore = []
    stack = contextlib.ExitStack()
    # the class embeddings: OpenVocabEncoderDecoder.text_inputs, the
    # training-free CLIPDenseSegmentor.vocabulary_embeddings
    text_method = next((name for name in TEXT_METHODS
                        if callable(getattr(model, name, None))), None)
    if text_method is not None:
        if count_text:
            # a frozen encoder would answer from its cache or its bank
            uncached = getattr(getattr(model, 'text_encoder', None),
                               'uncached', None)
            if uncached is not None:
                stack.enter_context(uncached())
        else:
            text = getattr(model, text_method)()
            setattr(model, text_method, lambda: text)
            restore.append(text_method)
    if hasattr(model, '_forward'):  # an mmseg segmentor
        original = model._forward

        def flat_forward(inputs, data_samples=None):
            return _tensors(original(inputs, data_samples))

        model._forward = flat_forward
        restore.append('_forward')
    else:  # any other module: its forward, outputs flattened
        plain = model.forward

        def flat_plain(*args, **kwargs):
            return _tensors(plain(*args, **kwargs))

        model.forward = flat_plain
        restore.append('forward')
    try:
        with stack, through_call(dict(model.named_children())):
            yield
    finally:
        for name in restore:
            if name in vars(model):
                delattr(model, name)


def _sdpa_cpu_flop(query, key, value, *args, out_val=None, **kwargs) -> int:
    """``_scaled_dot_product_flash_attention_for_cpu`` (the CPU kernel of
    ``F.scaled_dot_product_attention``, which torch's own table misses):
    L*S*(E + Ev) multiply-adds per batch element and head (q @ k^T and
    weights @ v), returned in torch's unit (2 per multiply-add)."""
    batch = _prod(query[:-2])
    return 2 * batch * query[-2] * key[-2] * (query[-1] + value[-1])


def _native_mha_flop(query, key, value, *args, out_val=None,
                     **kwargs) -> int:
    """``_native_multi_head_attention`` (``nn.MultiheadAttention``'s
    inference fast path): q, k, v and output projections, q @ k^T and
    weights @ v; torch's unit (2 per multiply-add)."""
    batch, dim = _prod(query[:-2]), query[-1]
    length, source = query[-2], key[-2]
    return 2 * (batch * (2 * length + 2 * source) * dim * dim +
                2 * batch * length * source * dim)


def _onednn_linear_flop(x, *args, out_val=None, **kwargs) -> int:
    """``mkldnn::_linear_pointwise`` (oneDNN's linear layer, which
    :mod:`mmseg_ovss.clip.cpu_linear` runs fp32 inference on where it is
    the faster GEMM): x (..., K) @ W (N, K)^T, M*K*N multiply-adds; the
    ``binary`` overload passes the tensor it adds before W. torch's unit
    (2 per multiply-add)."""
    weight = args[0] if isinstance(args[2], str) else args[1]
    return 2 * _prod(x[:-1]) * x[-1] * weight[0]


def dispatch_flop_formulas() -> Dict[Any, Any]:
    """torch's dispatcher FLOP table (``torch.utils.flop_counter``: matrix
    products, convolutions, fused attention on GPU) plus the CPU attention
    kernels it lacks; every formula returns 2 per multiply-add."""
    from torch.utils.flop_counter import flop_registry
    aten = torch.ops.aten
    formulas = dict(flop_registry)
    formulas[aten._scaled_dot_product_flash_attention_for_cpu] = \
        _sdpa_cpu_flop
    formulas[aten._native_multi_head_attention] = _native_mha_flop
    onednn_linear = getattr(torch.ops.mkldnn, '_linear_pointwise', None)
    if onednn_linear is not None:
        formulas[onednn_linear] = _onednn_linear_flop
    return formulas


class DispatchFlopCounter(TorchDispatchMode):
    """Count FLOPs (fvcore convention: one multiply-add = 1) of every
    operator that runs while active (``with``), at torch's dispatcher: no
    tracing, so shapes stay Python ints and the forward runs as it always
    does (data-dependent branches included). Composite operators are
    decomposed until an operator with a formula (or none left) is reached,
    as ``torch.utils.flop_counter.FlopCounterMode`` does, without its
    module tracker.

    Args:
        charge (callable, optional): ``charge(op_name, flops)`` called for
            every counted operator (e.g. to charge the running stage).

    Attributes:
        total (int): FLOPs counted so far; ``by_operator``: per operator.
    """

    def __init__(self, charge: Optional[Callable[[str, int], None]] = None):
        super().__init__()
        self.formulas = dispatch_flop_formulas()
        self.charge = charge
        self.total = 0
        self.by_operator: Dict[str, int] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        formula = self.formulas.get(packet)
        if formula is None and func is not torch.ops.prim.device.default:
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if formula is not None:
            flops = int(formula(*tree_map(_shape, args),
                                out_val=tree_map(_shape, out),
                                **tree_map(_shape, kwargs))) // 2
            self.total += flops
            name = str(packet).split('.')[-1]
            self.by_operator[name] += flops
            if self.charge is not None:
                self.charge(name, flops)
        return out


def _shape(value):
    return value.shape if torch.is_tensor(value) else value


#: where :class:`StageFlopCounter` puts FLOPs counted outside every stage
UNSTAGED = '(outside stages)'


class StageFlopCounter:
    """FLOPs per stage of a :class:`~mmseg_ovss.utils.profiler.
    StageProfiler`: while both are active, every FLOP counted by
    :class:`DispatchFlopCounter` is charged to the profiler's outermost
    running stage (the one its seconds go to; nested stages are charged to
    the outermost, as the profiler times them), or to :data:`UNSTAGED`.
    The stages therefore add up to ``total`` exactly.

    Use it in an untimed pass (counting at the dispatcher slows the
    forward)::

        with profiler, StageFlopCounter(profiler) as flops:
            model.predict(...)
        flops.stages  # {'backbone': ..., 'head': ..., ...}
    """

    def __init__(self, profiler):
        self.profiler = profiler
        self.stages: Dict[str, int] = Counter()
        self._mode: Optional[DispatchFlopCounter] = None

    @property
    def total(self) -> int:
        return sum(self.stages.values())

    def _charge(self, op: str, flops: int) -> None:
        self.stages[self.profiler.current or UNSTAGED] += flops

    def reset(self) -> None:
        self.stages.clear()

    def __enter__(self) -> 'StageFlopCounter':
        self._mode = DispatchFlopCounter(self._charge)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        self._mode.__exit__(*exc)
        self._mode = None
        return False


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def measure_matmul_rate(dtype: torch.dtype = torch.float32,
                        shape=(1024, 768, 3072), repeats: int = 5,
                        min_seconds: float = 0.05,
                        device='cpu') -> Dict:
    """The machine's achieved matrix-product rate at a transformer shape:
    a linear layer of (M, K) tokens with a (N, K) weight and bias (a ViT-B
    MLP's first layer for M tokens when (K, N) = (768, 3072)), at the
    current ``torch.get_num_threads()``, on the kernel the package's dense
    path uses (:func:`mmseg_ovss.clip.cpu_linear.linear`: oneDNN or BLAS
    for fp32 on the CPU, ``F.linear`` otherwise).

    After one untimed call, each of ``repeats`` timings runs the product
    enough times to last ``min_seconds``; the rate is in the package's FLOP
    convention (one multiply-add = 1, so M*K*N per product; a vendor's
    peak in 2-FLOP-per-multiply-add units is twice this figure).

    Returns:
        dict: ``gflop_per_s`` (of the fastest timing: what the machine
        reaches), ``gflop_per_s_median``, ``dtype``, ``shape``,
        ``threads``, ``device``, ``seconds_per_product`` (fastest),
        ``kernel`` (``'onednn'``, ``'blas'`` or ``'default'``).
    """
    from mmseg_ovss.clip.cpu_linear import linear, uses_onednn
    if repeats < 1 or len(shape) != 3 or min(shape) < 1:
        raise ValueError(f'measure_matmul_rate: repeats={repeats} must be '
                         f'>= 1 and shape={shape} three positive sizes '
                         '(M, K, N)')
    device = torch.device(device)
    m, k, n = (int(v) for v in shape)
    generator = torch.Generator(device='cpu').manual_seed(0)
    x = torch.randn(m, k, generator=generator).to(device, dtype)
    # a parameter, as a layer's weight: oneDNN runs it packed, as the
    # model's linear layers (mmseg_ovss.clip.cpu_linear.packed_weight)
    weight = nn.Parameter((torch.randn(n, k, generator=generator)
                           / k**0.5).to(device, dtype), requires_grad=False)
    bias = torch.zeros(n).to(device, dtype)
    import time
    with torch.no_grad():
        kernel = ('onednn' if uses_onednn(x, weight) else 'blas') \
            if device.type == 'cpu' and dtype == torch.float32 \
            else 'default'
        linear(x, weight, bias)  # warm-up: kernel choice, page faults
        _sync(device)
        start = time.perf_counter()
        linear(x, weight, bias)
        _sync(device)
        once = max(time.perf_counter() - start, 1e-9)
        calls = max(1, int(min_seconds / once))
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                linear(x, weight, bias)
            _sync(device)
            timings.append((time.perf_counter() - start) / calls)
    best = min(timings)
    median = sorted(timings)[len(timings) // 2]
    macs = m * k * n
    return dict(gflop_per_s=macs / best / 1e9,
                gflop_per_s_median=macs / median / 1e9,
                dtype=str(dtype).replace('torch.', ''), shape=[m, k, n],
                threads=torch.get_num_threads(), device=str(device),
                seconds_per_product=best, calls_per_timing=calls,
                repeats=repeats, kernel=kernel)


def dispatch_flops(model: nn.Module, inputs: torch.Tensor):
    """FLOPs by :class:`DispatchFlopCounter` (no tracing: shapes stay
    Python ints, so code that validates them runs unchanged). It counts
    matrix products, convolutions and attention, not normalisations or
    resizing. A FLOP is charged to every top-level child that is running
    (it or any submodule, called in any way). Returns (total, {top-level
    child: flops}, {op: flops})."""
    depth: Dict[str, int] = Counter()
    by_module: Dict[str, int] = Counter()

    def charge(op, flops):
        for name, level in depth.items():
            if level:
                by_module[name] += flops

    def enter(name):
        def hook(module, args):
            depth[name] += 1
        return hook

    def leave(name):
        def hook(module, args, output):
            depth[name] -= 1
        return hook

    handles = []
    for name, child in model.named_children():
        for module in child.modules():
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(
                leave(name), always_call=True))
    counter = DispatchFlopCounter(charge)
    try:
        with counter:
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return counter.total, dict(by_module), dict(counter.by_operator)


def model_complexity(model: nn.Module, inputs: torch.Tensor,
                     count_text: bool = False,
                     counter: str = 'auto') -> Dict:
    """FLOPs (one multiply-add = 1) and parameters of ``model``'s test-time
    tensor forward on ``inputs`` (B, 3, H, W), in eval mode, without
    gradients.

    Returns:
        dict: ``flops`` (of the whole batch), ``flops_per_image``,
        ``params``, ``learnable`` (parameters with ``requires_grad``),
        ``per_module`` (top-level child -> ``flops``, ``params``,
        ``learnable``; ``'(own)'`` holds what no child does, e.g. ops in a
        segmentor's own methods), ``by_operator`` (FLOPs per operator) and
        ``skipped_ops`` (uncounted operator -> number of calls).
    """
    if counter not in ('auto', 'jit', 'dispatch'):
        raise ValueError(f"counter={counter!r}: 'auto', 'jit' or 'dispatch'")
    was_training = model.training
    model.eval()
    used = counter
    try:
        with torch.no_grad(), tensor_forward(model, count_text):
            total = None
            if counter in ('auto', 'jit'):
                try:
                    analyzer = flop_analyzer(model, (inputs, ))
                    total = analyzer.total()
                    by_module = analyzer.by_module()
                    by_operator = dict(analyzer.by_operator())
                    skipped = dict(analyzer.unsupported_ops())
                    used = 'jit'
                except Exception:
                    # tracing turns shapes into tensors; code that checks
                    # them as Python ints cannot be traced
                    if counter == 'jit':
                        raise
            if total is None:
                total, by_module, by_operator = dispatch_flops(model, inputs)
                skipped = {}
                used = 'dispatch'
    finally:
        model.train(was_training)
    params = count_parameters(model)
    per_module = OrderedDict()
    named = OrderedDict(model.named_children())
    for name in named:
        stats = params['per_module'].get(name, dict(total=0, learnable=0))
        per_module[name] = dict(flops=int(by_module.get(name, 0)),
                                params=stats['total'],
                                learnable=stats['learnable'])
    own_flops = int(total) - sum(m['flops'] for m in per_module.values())
    own = params['per_module'].get(OWN, dict(total=0, learnable=0))
    if own_flops or own['total']:
        per_module[OWN] = dict(flops=own_flops, params=own['total'],
                               learnable=own['learnable'])
    batch = int(inputs.shape[0])
    return dict(
        flops=int(total), flops_per_image=int(total) / batch,
        params=params['total'], learnable=params['learnable'],
        per_module=per_module, by_operator=by_operator,
        skipped_ops=dict(Counter(skipped)),
        input_shape=list(inputs.shape), count_text=count_text,
        counter=used)


def format_complexity(result: Dict, title: Optional[str] = None) -> str:
    """A table of :func:`model_complexity`'s result (GFLOPs per image,
    millions of parameters)."""
    batch = result['input_shape'][0]
    rows = [('module', 'GFLOPs/image', 'params (M)', 'learnable (M)')]
    for name, stats in result['per_module'].items():
        rows.append((name, f'{stats["flops"] / batch / 1e9:.4f}',
                     f'{stats["params"] / 1e6:.4f}',
                     f'{stats["learnable"] / 1e6:.4f}'))
    rows.append(('all', f'{result["flops_per_image"] / 1e9:.4f}',
                 f'{result["params"] / 1e6:.4f}',
                 f'{result["learnable"] / 1e6:.4f}'))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ['  '.join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, '-' * len(lines[0]))
    if title:
        lines.insert(0, title)
    return '\n'.join(lines)
