"""Multi-head attention pieces of an open_clip ``ResidualAttentionBlock``.

The dense strategies re-use the block's own projections (``attn.in_proj_*``
and ``attn.out_proj`` of ``nn.MultiheadAttention``) and change only how the
token-to-token weights are formed. :func:`block_forward` and
:func:`block_forward_with_attention` write a whole block out from its own
modules (``ln_1``, the attention projections, ``ls_1``, ``ln_2``, ``mlp``,
``ls_2``) so that an attention mask and drop path can be added; they work
unchanged when q/k/v are split by :func:`mmseg_ovss.clip.freeze.
split_qkv_projection` (``attn.in_proj_weight`` still reads fused there).
"""
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import Tensor, nn

from mmseg_ovss.clip.cpu_linear import linear, uses_onednn
from mmseg_ovss.clip.precision import cpu_has_amx
from mmseg_ovss.clip.workspace import workspace
from mmseg_ovss.utils.errors import OVSSConfigError


def _multihead(block: nn.Module) -> nn.MultiheadAttention:
    attn = getattr(block, 'attn', None)
    if not isinstance(attn, nn.MultiheadAttention):
        raise OVSSConfigError(
            f'dense CLIP strategies need open_clip ViT blocks with '
            f'nn.MultiheadAttention, got {type(attn).__name__}; use a standard '
            'CLIP ViT (e.g. ViT-B-16) rather than a custom-attention variant')
    return attn


def project_qkv(block: nn.Module, x: Tensor, scratch: bool = False
                ) -> Tuple[Tensor, Tensor, Tensor]:
    """q, k, v of normalised tokens x (B, N, C), each (B, heads, N, d).

    ``scratch``: for a caller that is done with q, k and v before it
    returns, the projection is written into this thread's ``'qkv'``
    workspace buffer (:mod:`mmseg_ovss.clip.workspace`) when it runs on the
    CPU without autograd or autocast; else into a new tensor. fp32 on the
    CPU runs on the GEMM :mod:`mmseg_ovss.clip.cpu_linear` chooses (a new
    tensor when that is oneDNN)."""
    attn = _multihead(block)
    b, n, c = x.shape
    heads = attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if uses_onednn(x, weight):
        qkv = linear(x, weight, bias)
    elif scratch and x.device.type == 'cpu' and \
            not _records_graph(x, module=attn) and not _autocast_on(x):
        rows = x.reshape(b * n, c)
        qkv = _scratch('qkv', (b * n, weight.shape[0]), rows)
        if bias is None:
            torch.mm(rows, weight.t(), out=qkv)
        else:
            torch.addmm(bias, rows, weight.t(), out=qkv)
    else:
        qkv = F.linear(x, weight, bias)
    qkv = qkv.view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def project_out(block: nn.Module, x: Tensor) -> Tensor:
    """Merge heads (B, heads, N, d) -> (B, N, C) and apply ``out_proj``
    (by :func:`mmseg_ovss.clip.cpu_linear.linear` where that runs on
    oneDNN: the module's hooks then do not run)."""
    attn = _multihead(block)
    b, h, n, d = x.shape
    merged = x.transpose(1, 2).reshape(b, n, h * d)
    out_proj = attn.out_proj
    if uses_onednn(merged, out_proj.weight):
        return linear(merged, out_proj.weight, out_proj.bias)
    return out_proj(merged)


# On the CPU, attention scores are formed for a few windows (or a few
# heads of one window) at a time so that each block of scores stays in
# cache: about 3x faster than one batched softmax(q k^T) over B windows of
# 577 tokens (same numbers), and 6 of ViT-B's 12 heads at a time about
# 0.85 x of whole windows (AMD EPYC, fp32).
CPU_SCORE_ELEMENTS = 1 << 21


def scaled_similarity(a: Tensor, b: Tensor,
                      out: Optional[Tensor] = None) -> Tensor:
    """a b^T / sqrt(d) for (B, heads, N, d) tensors (a scaled first: d
    times fewer multiplications than scaling the product), into ``out``
    when given."""
    return torch.matmul(a * a.shape[-1] ** -0.5, b.transpose(-2, -1),
                        out=out)


def softmax_(scores: Tensor) -> Tensor:
    """softmax over the last axis, in place when no gradient is recorded
    (the same numbers as ``scores.softmax(-1)``, one (..., N, N) buffer
    fewer). bf16/fp16 scores are reduced in fp32 inside PyTorch's kernel
    and only stored in the low precision."""
    if scores.requires_grad:
        return scores.softmax(dim=-1)
    return torch.softmax(scores, -1, out=scores)


def vanilla_attention(q: Tensor, k: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) (Vaswani et al., Eq. 1)."""
    return softmax_(scaled_similarity(q, k))


def score_batch_size(q: Tensor) -> int:
    """Windows per attention-score block for (B, heads, N, d) queries:
    all of them off the CPU, else as many as fit CPU_SCORE_ELEMENTS."""
    b, heads, n, _ = q.shape
    if q.device.type != 'cpu':
        return b
    return max(1, CPU_SCORE_ELEMENTS // (heads * n * n))


def apply_mask(scores: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Attention logits with a mask: ``scores + mask`` for an additive
    float mask, ``-inf`` where a bool mask is False (SDPA's meaning)."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float('-inf'))
    return scores + mask


def _explicit_on_this_cpu(*tensors: Tensor) -> bool:
    """bf16 attention without autograd on a CPU without AMX tiles."""
    q = tensors[0]
    if q.device.type != 'cpu' or q.dtype != torch.bfloat16:
        return False
    if _records_graph(*tensors):
        return False
    return not cpu_has_amx()


def attention_values(q: Tensor, k: Tensor, v: Tensor,
                     attn_mask: Optional[Tensor] = None) -> Tensor:
    """softmax(q k^T / sqrt(d) [+ mask]) v for (B, heads, N, d) tensors.

    ``F.scaled_dot_product_attention``, except for bf16 inference on a CPU
    without AMX tiles: there PyTorch's fused CPU kernel runs at about a
    quarter of the bf16 matmul rate (AMD EPYC with AVX512-BF16, ViT-B/16,
    6 windows x 12 heads x 577 tokens: 51-54 ms against 45-48 ms in fp32),
    and forming the weights explicitly, in tiles of windows or heads
    (:func:`score_tiles`, as the captured blocks do) with bf16 matmuls
    takes 34-37 ms. The weights are then stored in bf16 (the
    softmax reduces in fp32): about 3 x the rounding error of the fused
    kernel, which keeps them in fp32 per tile; on ADE-size images the
    label maps agreed with fp32 as often either way (``docs/
    clip_backbone.md``). ``attn_mask``: as for SDPA (additive float or
    bool, broadcastable to (B, heads, N, N)).
    """
    if not _explicit_on_this_cpu(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return _tiled_attention(q, k, v, attn_mask, None)[0]


# Without autograd on the CPU, a block's MLP runs on chunks of rows whose
# hidden activations hold at most this many elements (16 MiB in fp32), in
# one hidden and one gate buffer shared by the chunks (this thread's
# workspace buffers, kept from call to call). The
# (B N, 4C) hidden buffers of a whole batch of windows (three of them in
# QuickGELU) are larger than glibc's largest mmap threshold (32 MiB), so
# they are mapped afresh from the system and page-faulted in at every
# block: about 10 % of a ViT-B/16 block in fp32 and in bf16 (AMD EPYC,
# 6 windows x 577 tokens).
CPU_MLP_HIDDEN_ELEMENTS = 1 << 22


def _records_graph(*tensors: Tensor,
                   module: Optional[nn.Module] = None) -> bool:
    """Whether autograd records a graph through ``tensors`` or the
    parameters of ``module``."""
    if not torch.is_grad_enabled():
        return False
    return any(t.requires_grad for t in tensors) or (
        module is not None and any(p.requires_grad
                                   for p in module.parameters()))


def _autocast_on(x: Tensor) -> bool:
    """Autocast casts ``c_fc``'s output but not an ``out=`` product."""
    return torch.is_autocast_enabled(x.device.type)


def _scratch(name: str, shape: Tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised buffer for one call: this thread's workspace
    buffer ``name`` on the CPU (kept from call to call), else new."""
    if like.device.type == 'cpu':
        return workspace(name, shape, like.dtype, like.device)
    return like.new_empty(shape)


def _open_clip_mlp_parts(mlp: nn.Module) -> Optional[Tuple[nn.Module, ...]]:
    """(c_fc, gelu, ln, c_proj) of an open_clip block's MLP, or None for
    any other module."""
    parts = tuple(getattr(mlp, name, None)
                  for name in ('c_fc', 'gelu', 'ln', 'c_proj'))
    c_fc, gelu, ln, c_proj = parts
    if not (isinstance(c_fc, nn.Linear) and isinstance(c_proj, nn.Linear)
            and gelu is not None):
        return None
    return c_fc, gelu, ln, c_proj


def _linear_into(layer: nn.Linear, x: Tensor, out: Tensor) -> Tensor:
    """``layer(x)`` for 2-D ``x``, written into ``out`` (F.linear's own
    product, ``addmm`` with the bias)."""
    if layer.bias is None:
        return torch.mm(x, layer.weight.t(), out=out)
    return torch.addmm(layer.bias, x, layer.weight.t(), out=out)


def _activate_(gelu: nn.Module, hidden: Tensor,
               gate: Optional[Tensor] = None) -> Tensor:
    """``gelu(hidden)``, in place for open_clip's QuickGELU:
    x * sigmoid(1.702 x), the same operations on the same numbers in
    ``hidden`` and one ``gate`` buffer (allocated when not given) instead
    of three new buffers."""
    if isinstance(gelu, QuickGELU):
        gate = torch.mul(hidden, 1.702, out=gate)
        gate.sigmoid_()
        return hidden.mul_(gate)
    return gelu(hidden)


def mlp_forward(mlp: nn.Module, x: Tensor) -> Tensor:
    """``mlp(x)`` of an open_clip block (``c_fc``, ``gelu``, optional
    ``ln``, ``c_proj``) for inference.

    Without autograd, QuickGELU runs in place (:func:`_activate_`) and, on
    the CPU, the rows run in chunks of at most
    :data:`CPU_MLP_HIDDEN_ELEMENTS` hidden activations, each chunk's
    output written into one (..., C) result. The same operations per row
    as ``mlp(x)``; the chunks share one hidden and one gate buffer (on the
    CPU this thread's workspace buffers, :mod:`mmseg_ovss.clip.workspace`,
    kept from call to call). With
    autograd (training), under autocast (mixed
    precision) or for another MLP module, ``mlp(x)`` itself.
    """
    parts = _open_clip_mlp_parts(mlp)
    if parts is None or _records_graph(x, module=mlp) or _autocast_on(x):
        return mlp(x)
    c_fc, gelu, ln, c_proj = parts
    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    if x.device.type != 'cpu':
        step = max(1, count)
    else:
        step = max(1, CPU_MLP_HIDDEN_ELEMENTS // c_fc.out_features)
    out = rows.new_empty((count, c_proj.out_features))
    # the chunks' hidden and gate buffers (oneDNN makes its own outputs)
    onednn = uses_onednn(rows, c_fc.weight)
    hidden_shape = (min(step, count), c_fc.out_features)
    hidden_buffer = None if onednn else \
        _scratch('mlp_hidden', hidden_shape, rows)
    gate_buffer = _scratch('mlp_gate', hidden_shape, rows) \
        if isinstance(gelu, QuickGELU) else None
    for start in range(0, count, step):
        size = min(step, count - start)
        chunk = out[start:start + size]
        if onednn:
            hidden = linear(rows[start:start + size], c_fc.weight, c_fc.bias)
        else:
            hidden = _linear_into(c_fc, rows[start:start + size],
                                  hidden_buffer[:size])
        gate = None if gate_buffer is None else gate_buffer[:size]
        hidden = _activate_(gelu, hidden, gate)
        if ln is not None:
            hidden = ln(hidden)
        if onednn:
            chunk.copy_(linear(hidden, c_proj.weight, c_proj.bias))
        else:
            _linear_into(c_proj, hidden, chunk)
    return out.view(*x.shape[:-1], c_proj.out_features)


def finish_block(block: nn.Module, x: Tensor, attended: Tensor,
                 drop_path: Optional[nn.Module] = None) -> Tensor:
    """The two residual branches of a pre-norm block around the merged
    attention output ``attended`` (B, N, C): ``x + ls_1(attended)``, then
    ``+ ls_2(mlp(ln_2(.)))``; ``drop_path`` (stochastic depth, Huang et
    al. 2016) on both branches, as in mmseg's ``TransformerEncoderLayer``."""
    branch = block.ls_1(attended)
    x = x + (branch if drop_path is None else drop_path(branch))
    branch = block.ls_2(mlp_forward(block.mlp, block.ln_2(x)))
    return x + (branch if drop_path is None else drop_path(branch))


def block_forward(block: nn.Module, x: Tensor,
                  attn_mask: Optional[Tensor] = None,
                  drop_path: Optional[nn.Module] = None) -> Tensor:
    """One block on batch-first tokens (B, N, C), written out from its own
    modules, with ``attn_mask`` (checked, broadcastable to (B, heads, N,
    N), see :mod:`mmseg_ovss.clip.tokens`) added to the attention logits
    (CLIP-RC Eq. 2) by :func:`attention_values` (the fused
    kernel: flash attention on the CPU and on CUDA without a mask; open_clip's
    own ``block(x)`` goes through ``nn.MultiheadAttention``'s fast path,
    which on the CPU forms the (N, N) weights with two ``bmm`` and a
    softmax)."""
    q, k, v = project_qkv(block, block.ln_1(x), scratch=True)
    out = attention_values(q, k, v, attn_mask)
    return finish_block(block, x, project_out(block, out), drop_path)


def block_forward_with_attention(
        block: nn.Module,
        x: Tensor,
        reduce_heads: Optional[Callable[[Tensor], Tensor]] = None,
        attn_mask: Optional[Tensor] = None,
        drop_path: Optional[nn.Module] = None
) -> Tuple[Tensor, Tensor]:
    """Run a block and return its output and attention weights.

    Without mask and drop path, the same result as ``block(x)``; also
    returns softmax(q k^T / sqrt(d) [+ mask]) of shape (B, heads, N, N), or
    ``reduce_heads`` of it: a :class:`HeadReduction` (what
    :func:`head_reduction` returns) or any map of (B', heads, N, N)
    weights applied per block of windows (see :func:`score_batch_size`).
    Without autograd and with a :class:`HeadReduction` (or None), the
    weights are formed in tiles of windows and heads
    (:func:`score_tiles`) written straight into the output and the
    reduction.
    """
    q, k, v = project_qkv(block, block.ln_1(x), scratch=True)
    if reduce_heads is None:
        reduce_heads = HeadReduction(None, q.shape[1])
    if isinstance(reduce_heads, HeadReduction) and \
            not _records_graph(q, k, v):
        out, captured = _tiled_attention(q, k, v, attn_mask, reduce_heads)
    else:
        out, captured = _windowed_attention(q, k, v, attn_mask,
                                            reduce_heads)
    x = finish_block(block, x, project_out(block, out), drop_path)
    return x, captured


def _windowed_attention(q: Tensor, k: Tensor, v: Tensor,
                        attn_mask: Optional[Tensor],
                        reduce_heads: Callable[[Tensor], Tensor]
                        ) -> Tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(d) [+ mask]) v and ``reduce_heads`` of the
    weights, a block of windows at a time (autograd-safe)."""
    step = score_batch_size(q)
    outputs, captured = [], []
    for start in range(0, q.shape[0], step):
        window = slice(start, start + step)
        if attn_mask is None:
            weights = vanilla_attention(q[window], k[window])
        else:
            weights = softmax_(apply_mask(
                scaled_similarity(q[window], k[window]),
                _tile_mask(attn_mask, window, slice(None))))
        outputs.append(torch.matmul(weights, v[window]))
        captured.append(reduce_heads(weights))
    if len(outputs) > 1:
        return torch.cat(outputs), torch.cat(captured)
    return outputs[0], captured[0]


def score_tiles(q: Tensor) -> Tuple[int, int]:
    """(windows, heads) per tile of attention scores for (B, heads, N, d)
    queries: one tile off the CPU; on the CPU at most
    :data:`CPU_SCORE_ELEMENTS` scores, whole windows when one window's
    heads fit, else one window and a group of its heads."""
    b, heads, n, _ = q.shape
    if q.device.type != 'cpu':
        return b, heads
    group = min(heads, max(1, CPU_SCORE_ELEMENTS // (n * n)))
    if group < heads:
        return 1, group
    return score_batch_size(q), heads


def _tile_mask(mask: Optional[Tensor], windows: slice,
               heads: slice) -> Optional[Tensor]:
    """The part of a mask broadcastable to (B, heads, N, N) that applies
    to a tile of windows and heads."""
    if mask is None or mask.dim() < 3:
        return mask
    if mask.dim() == 3:
        return mask[heads] if mask.shape[0] > 1 else mask
    mask = mask[windows] if mask.shape[0] > 1 else mask
    return mask[:, heads] if mask.shape[1] > 1 else mask


def _tiled_attention(q: Tensor, k: Tensor, v: Tensor,
                     attn_mask: Optional[Tensor],
                     reduction: Optional['HeadReduction']
                     ) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`_windowed_attention` without autograd, tile by tile
    (:func:`score_tiles`): each tile's scores are masked and softmaxed in
    place, multiplied into the output and added to the reduction (None:
    the weights are not kept) while they are in cache. On an AMD EPYC (2
    cores, fp32, ViT-B/16 windows of 577 tokens) tiles of 6 of the 12
    heads form the weights and head mean of a block in about 0.85 x the
    time of whole windows."""
    b, heads, n, _ = q.shape
    windows, group = score_tiles(q)
    out = q.new_empty((b, heads, n, v.shape[-1]))
    captured = None if reduction is None else reduction.new_output(q)
    for first in range(0, b, windows):
        rows = slice(first, first + windows)
        for head in range(0, heads, group):
            cols = slice(head, head + group)
            target = None if reduction is None else \
                reduction.tile_target(captured, rows, cols)
            scores = scaled_similarity(q[rows, cols], k[rows, cols],
                                       target)
            mask = _tile_mask(attn_mask, rows, cols)
            if mask is not None and mask.dtype == torch.bool:
                scores.masked_fill_(~mask, float('-inf'))
            elif mask is not None:
                scores.add_(mask)
            torch.matmul(softmax_(scores), v[rows, cols],
                         out=out[rows, cols])
            if reduction is not None:
                reduction.add_tile(captured, rows, cols, scores)
    return out, None if reduction is None else reduction.finish(captured)


class HeadReduction:
    """The map applied to captured (B, heads, N, N) attention: every head
    (None), their mean (``'mean'``) or one head (an index, negative
    allowed); the last two keep a head axis of size 1. The mean is
    accumulated and returned in fp32 whatever the weights' dtype (bf16
    weights of a low-precision forward are not averaged in bf16).

    Called on weights, it reduces them; :func:`_tiled_attention` instead
    adds tiles of heads one by one (:meth:`new_output`, :meth:`add_tile`,
    :meth:`finish`): the mean is then the fp32 sum of the heads, added one
    by one, over the number of heads (the same terms, summed in another
    order).
    """

    def __init__(self, attention_heads: Union[None, str, int],
                 num_heads: int):
        if attention_heads is not None and attention_heads != 'mean' and (
                isinstance(attention_heads, bool)
                or not isinstance(attention_heads, int)
                or not -num_heads <= attention_heads < num_heads):
            raise OVSSConfigError(
                f'attention_heads={attention_heads!r} is not None, '
                f"'mean' or a head index in [{-num_heads}, {num_heads - 1}]")
        self.attention_heads = attention_heads
        self.num_heads = num_heads
        self.index = attention_heads % num_heads \
            if isinstance(attention_heads, int) else None

    def __call__(self, weights: Tensor) -> Tensor:
        if self.attention_heads is None:
            return weights
        if self.attention_heads == 'mean':
            return weights.mean(dim=1, keepdim=True, dtype=torch.float32)
        return weights[:, self.index:self.index + 1].to(torch.float32,
                                                        copy=True)

    def new_output(self, q: Tensor) -> Tensor:
        """The reduced weights of (B, heads, N, d) queries, to be filled."""
        b, heads, n, _ = q.shape
        if self.attention_heads is None:
            return q.new_empty((b, heads, n, n))
        if self.attention_heads == 'mean':
            return q.new_zeros((b, 1, n, n), dtype=torch.float32)
        return q.new_empty((b, 1, n, n), dtype=torch.float32)

    def tile_target(self, output: Tensor, rows: slice,
                    cols: slice) -> Optional[Tensor]:
        """Where a tile's scores are formed: in the output itself when
        every head is kept, else in a new buffer (None)."""
        return output[rows, cols] if self.attention_heads is None else None

    def add_tile(self, output: Tensor, rows: slice, cols: slice,
                 weights: Tensor) -> None:
        """Add the (windows, heads) tile ``weights`` of windows ``rows`` and
        heads ``cols`` to the output."""
        if self.attention_heads == 'mean':
            # head by head into the fp32 sums: fp32 += bf16 converts per
            # element (a sum with dtype=float32 first copies the whole
            # tile to fp32: 3 x the time of these adds for bf16 tiles)
            total = output[rows, 0]
            for head in range(weights.shape[1]):
                total.add_(weights[:, head])
        elif self.index is not None and \
                cols.start <= self.index < cols.start + weights.shape[1]:
            column = self.index - cols.start
            output[rows].copy_(weights[:, column:column + 1])

    def finish(self, output: Tensor) -> Tensor:
        if self.attention_heads == 'mean':
            return output.div_(self.num_heads)
        return output


def head_reduction(attention_heads: Union[None, str, int], num_heads: int
                   ) -> HeadReduction:
    """:class:`HeadReduction` of ``attention_heads`` (checked)."""
    return HeadReduction(attention_heads, num_heads)


def project_cls_query_kv(block: nn.Module, normed: Tensor
                         ) -> Tuple[Tensor, Tensor]:
    """The query of the CLS token (first) and the keys and values of every
    token of normalised tokens (..., N, C): (..., 1, C) and (..., N, 2C),
    heads not split."""
    attn = _multihead(block)
    c = normed.shape[-1]
    bias = attn.in_proj_bias
    q = linear(normed[..., :1, :], attn.in_proj_weight[:c],
               None if bias is None else bias[:c])
    kv = linear(normed, attn.in_proj_weight[c:],
                None if bias is None else bias[c:])
    return q, kv


def cls_block_forward(block: nn.Module, x: Tensor) -> Tensor:
    """``block(x)[:, :1]`` computed for the CLS query only.

    The CLS output of a block reads every token through attention, but no
    other token's output; the last block of a CLS-only forward therefore
    needs one query row and one MLP row instead of N (exact).
    """
    heads = _multihead(block).num_heads
    q, kv = project_cls_query_kv(block, block.ln_1(x))
    b, n, c = x.shape
    q = q.view(b, 1, heads, c // heads).transpose(1, 2)
    k, v = kv.view(b, n, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    cls = x[:, :1] + block.ls_1(project_out(block, out))
    return cls + block.ls_2(mlp_forward(block.mlp, block.ln_2(cls)))


class RegionCLSReadout:
    """The CLS output of ``block`` when its query sees only some tokens.

    For each region r, ``block(x[window_index[r]][token_mask[r]])[0]``: the
    block run on the tokens of the region alone (the CLS token must be one
    of them), of which only the CLS output is formed. The CLS query's
    scores and the values are projected once per window, on the first
    call that needs the window, and shared by its regions in every later
    call (the rounds of Eq. 8); the loop is over windows, never regions.

    Args:
        block: an open_clip ``ResidualAttentionBlock``.
        x: (B, N, C) the block's input tokens of B windows, CLS first.
    """

    def __init__(self, block: nn.Module, x: Tensor):
        self.block = block
        self.x = x
        self._windows = {}

    def _scores_and_values(self, window: int) -> Tuple[Tensor, Tensor]:
        if window not in self._windows:
            heads = _multihead(self.block).num_heads
            q, kv = project_cls_query_kv(self.block,
                                         self.block.ln_1(self.x[window]))
            n, c = self.x.shape[1:]
            q = q.view(heads, c // heads) * (c // heads) ** -0.5
            k, v = kv.view(n, 2, heads, c // heads).permute(1, 2, 0, 3)
            scores = torch.einsum('hd,hnd->hn', q, k)
            self._windows[window] = (scores, v)
        return self._windows[window]

    def __call__(self, window_index: Tensor, token_mask: Tensor) -> Tensor:
        """(R, 1, C) CLS outputs of the regions.

        Args:
            window_index: (R, ) the window of each region.
            token_mask: (R, N) bool, the tokens each region's query sees.
        """
        b, n, c = self.x.shape
        if token_mask.shape != (len(window_index), n):
            raise OVSSConfigError(
                f'token_mask of shape {tuple(token_mask.shape)} does not '
                f'match {len(window_index)} regions of {n} tokens')
        heads = _multihead(self.block).num_heads
        out = self.x.new_empty(len(window_index), heads, c // heads)
        # one host sync: which windows have regions, and how many each;
        # the regions grouped by window are then slices of one sort
        windows, counts = torch.unique(window_index, return_counts=True)
        windows, counts = torch.stack((windows, counts)).tolist()
        by_window = torch.argsort(window_index, stable=True).split(counts)
        for window, regions in zip(windows, by_window):
            scores, values = self._scores_and_values(window)
            weights = scores.unsqueeze(0).masked_fill(
                ~token_mask[regions, None, :], float('-inf')).softmax(-1)
            out[regions] = torch.einsum('rhn,hnd->rhd', weights, values)
        block = self.block
        cls = self.x[window_index, :1] + block.ls_1(
            project_out(block, out.unsqueeze(2)))
        return cls + block.ls_2(mlp_forward(block.mlp, block.ln_2(cls)))
