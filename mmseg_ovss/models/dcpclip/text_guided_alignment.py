"""Text-guided alignment (DCP-CLIP, Sec. III-B, Fig. 4, Eqs. 7-12).

Two branches refine the cost-volume feature of the selected classes
(F_cost, Eq. 6, computed by the cost-volume head):

- CA, cross-modal alignment (Eqs. 7-10): a textual guidance G_t is built
  from the selected class embeddings, a learnable prompt and the [CLS]
  token's classification logits (Eq. 7); the CLIP patch features attend to
  it (queries from the patches, keys and values from G_t, Eq. 8), with a
  residual connection, LayerNorm and an MLP (Eqs. 9-10), giving the refined
  patch features F~_p.
- SA, cost fusion (Eqs. 11-12): the projected F~_p is repeated over the
  classes and concatenated with F_cost (Eq. 11); self-attention over the
  image positions of each class (queries, keys and values from the
  concatenation, Eq. 12) with residual, LayerNorm and MLP "as Eqs. 8-9".

Reconstructions (the equation bodies are missing from the paper's text):

- Eq. 7: ``G_t = W_g [T_sel ; E ; s]`` concatenated per class along the
  channels: T_sel the class embedding, E the learnable prompt, s the class's
  [CLS] logit ``tau * cos(F_cls, T_c)`` as one scalar (the full logit vector
  has a vocabulary-dependent length, so it cannot feed a fixed linear
  layer). ``prompt='shared'`` (default) concatenates one learned vector to
  every class, as the prose says; through the linear layer it acts as a
  learned offset of the guidance. ``prompt='tokens'`` instead appends
  ``num_prompt_tokens`` learned guidance rows that every patch can attend to
  (the prompt concatenated along the class axis). Each part is switchable
  (Table V): ``guidance=dict(text=True, prompt=True, cls_logits=True)``.
- Eqs. 9-10: post-norm ``F^ = LN(F_p + Attn)``, ``F~_p = LN(F^ + MLP(F^))``
  with multi-head scaled dot-product attention and MLP ratio 4 with GELU.
  ``out_proj=True`` (default) gives the attention the usual output
  projection W_O of multi-head attention, as in the decoders the paper
  follows (SegViT, ZegCLIP); ``False`` is Eq. 9 as written (no W_O). The SA
  branch follows the same choice.
- Eqs. 11-12: ``F_cat = [F_cost ; repeat(W_p F~_p)]`` (2d channels); q, k, v
  are linear maps of F_cat to d channels and the residual is added to
  F_cost, so the output keeps F_cost's width d. Attention is global over
  the h x w positions of each class (``sa_window=None``, default) or within
  non-overlapping windows (``sa_window=12``).
- One branch off (Table IV): without SA, F~_p still reaches the cost feature
  through Eq. 11's concatenation followed by a linear map to d (no
  attention); without CA, the SA branch takes the unrefined F_p.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS
from mmseg_ovss.utils.errors import OVSSConfigError, options_with_defaults

PROMPT_MODES = ('shared', 'tokens')


def _mlp(dims: int, ratio: float) -> nn.Sequential:
    hidden = int(dims * ratio)
    return nn.Sequential(nn.Linear(dims, hidden), nn.GELU(),
                         nn.Linear(hidden, dims))


def multi_head_attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int,
                         key_valid: Optional[Tensor] = None) -> Tensor:
    """softmax(q k^T / sqrt(d_head)) v per head; (B, L, C) x (B, S, C) ->
    (B, L, C). ``key_valid`` (B, S) bool masks out padded keys."""
    batch, length, channels = q.shape
    if channels % num_heads:
        raise OVSSConfigError(
            f'{channels} attention channels do not split into {num_heads} '
            'heads; choose num_heads dividing the width')

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], num_heads,
                         -1).transpose(1, 2)

    mask = None
    if key_valid is not None:
        mask = key_valid[:, None, None, :]
    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v),
                                         attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, length, -1)


class TextualGuidance(nn.Module):
    """Eq. 7: the textual guidance of the selected classes.

    Args:
        text_dims (int): width of the class embeddings (CLIP's D).
        out_dims (int): width of the guidance.
        text, prompt, cls_logits (bool): which parts are concatenated
            (Table V).
        prompt_mode (str): 'shared' (one learned vector concatenated to each
            class, default) or 'tokens' (learned guidance rows appended).
        prompt_dims (int): length of the shared prompt vector (default
            ``text_dims``).
        num_prompt_tokens (int): rows added with ``prompt_mode='tokens'``.
    """

    def __init__(self, text_dims: int, out_dims: int, text: bool = True,
                 prompt: bool = True, cls_logits: bool = True,
                 prompt_mode: str = 'shared',
                 prompt_dims: Optional[int] = None,
                 num_prompt_tokens: int = 4):
        super().__init__()
        if prompt_mode not in PROMPT_MODES:
            raise OVSSConfigError(
                f'TextualGuidance prompt_mode={prompt_mode!r} is not one of '
                f'{PROMPT_MODES}')
        shared_prompt = prompt and prompt_mode == 'shared'
        token_prompt = prompt and prompt_mode == 'tokens'
        if not (text or shared_prompt or cls_logits):
            raise OVSSConfigError(
                'the textual guidance has no per-class part: keep at least '
                'one of guidance.text, guidance.cls_logits, or a '
                "prompt with prompt_mode='shared'")
        self.use_text = text
        self.use_cls_logits = cls_logits
        self.prompt_dims = int(prompt_dims or text_dims)
        in_dims = (text_dims if text else 0) + \
            (self.prompt_dims if shared_prompt else 0) + \
            (1 if cls_logits else 0)
        self.prompt = nn.Parameter(torch.zeros(self.prompt_dims)) \
            if shared_prompt else None
        self.prompt_tokens = nn.Parameter(
            torch.zeros(num_prompt_tokens, out_dims)) if token_prompt \
            else None
        if token_prompt and num_prompt_tokens < 1:
            raise OVSSConfigError(
                f'num_prompt_tokens={num_prompt_tokens} must be >= 1 with '
                "prompt_mode='tokens'")
        self.proj = nn.Linear(in_dims, out_dims)
        self.reset_prompts()

    def reset_prompts(self) -> None:
        for param in (self.prompt, self.prompt_tokens):
            if param is not None:
                nn.init.normal_(param, std=0.02)

    def forward(self, text: Tensor, cls_logits: Tensor,
                valid: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, K, D) class embeddings, (B, K) [CLS] logits, (B, K) validity
        -> guidance (B, K[+M], out_dims) and its (B, K[+M]) validity."""
        parts = []
        if self.use_text:
            parts.append(text)
        if self.prompt is not None:
            parts.append(self.prompt.to(text.dtype).expand(
                *text.shape[:2], -1))
        if self.use_cls_logits:
            parts.append(cls_logits.unsqueeze(-1).to(text.dtype))
        guidance = self.proj(torch.cat(parts, dim=-1))
        if self.prompt_tokens is not None:
            tokens = self.prompt_tokens.to(guidance.dtype).expand(
                guidance.shape[0], -1, -1)
            guidance = torch.cat([guidance, tokens], dim=1)
            valid = torch.cat([valid, valid.new_ones(
                valid.shape[0], tokens.shape[1])], dim=1)
        return guidance, valid


class CrossModalAlignment(nn.Module):
    """CA branch, Eqs. 8-10: patches attend to the textual guidance.

    ``F^ = LN(F_p + softmax(Q K^T / sqrt(d)) V W_O)``,
    ``F~ = LN(F^ + MLP(F^))`` with ``Q = F_p W_Q``, ``K = G_t W_K``,
    ``V = G_t W_V`` (W_O the identity with ``out_proj=False``).
    """

    def __init__(self, embed_dims: int, guidance_dims: int,
                 num_heads: int = 8, mlp_ratio: float = 4.0,
                 out_proj: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(embed_dims, embed_dims)
        self.k = nn.Linear(guidance_dims, embed_dims)
        self.v = nn.Linear(guidance_dims, embed_dims)
        self.proj = nn.Linear(embed_dims, embed_dims) if out_proj \
            else nn.Identity()
        self.norm1 = nn.LayerNorm(embed_dims)
        self.mlp = _mlp(embed_dims, mlp_ratio)
        self.norm2 = nn.LayerNorm(embed_dims)

    def forward(self, patches: Tensor, guidance: Tensor,
                guidance_valid: Optional[Tensor] = None) -> Tensor:
        """(B, N, D) patches, (B, M, Dg) guidance -> (B, N, D)."""
        attended = multi_head_attention(self.q(patches), self.k(guidance),
                                        self.v(guidance), self.num_heads,
                                        guidance_valid)
        x = self.norm1(patches + self.proj(attended))
        return self.norm2(x + self.mlp(x))


def window_partition(x: Tensor, window: int) -> Tuple[Tensor, tuple]:
    """(B, h, w, C) -> (B * windows, window**2, C), zero-padding h, w to
    multiples of ``window``; returns what :func:`window_merge` needs."""
    batch, height, width, channels = x.shape
    pad_h, pad_w = (-height) % window, (-width) % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    rows, cols = (height + pad_h) // window, (width + pad_w) // window
    x = x.reshape(batch, rows, window, cols, window, channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)
    return x, (batch, height, width, rows, cols)


def window_merge(x: Tensor, window: int, layout: tuple) -> Tensor:
    """Inverse of :func:`window_partition`."""
    batch, height, width, rows, cols = layout
    x = x.reshape(batch, rows, cols, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, rows * window,
                                            cols * window, -1)
    return x[:, :height, :width]


class CostFusionAttention(nn.Module):
    """SA branch, Eqs. 11-12: self-attention over the positions of each
    class on ``[F_cost ; repeat(W_p F~_p)]``, residual on F_cost.

    Args:
        cost_dims (int): d, the cost-feature width.
        patch_dims (int): width of the (refined) patch features.
        num_heads (int): attention heads.
        mlp_ratio (float): MLP hidden ratio.
        window_size (int, optional): None for global attention over the
            h x w positions (default), or a window side.
        attention (bool): False keeps Eq. 11's fusion without the
            attention (the CA-only row of Table IV): ``F_cost + W_f F_cat``.
        out_proj (bool): output projection of the attention.
    """

    def __init__(self, cost_dims: int, patch_dims: int, num_heads: int = 4,
                 mlp_ratio: float = 4.0, window_size: Optional[int] = None,
                 attention: bool = True, out_proj: bool = True):
        super().__init__()
        if window_size is not None and window_size < 1:
            raise OVSSConfigError(
                f'sa_window={window_size!r}: give a positive window side or '
                'None for global attention')
        self.num_heads = num_heads
        self.window_size = window_size
        self.attention = attention
        self.patch_proj = nn.Linear(patch_dims, cost_dims)
        if attention:
            self.q = nn.Linear(2 * cost_dims, cost_dims)
            self.k = nn.Linear(2 * cost_dims, cost_dims)
            self.v = nn.Linear(2 * cost_dims, cost_dims)
            self.proj = nn.Linear(cost_dims, cost_dims) if out_proj \
                else nn.Identity()
            self.norm1 = nn.LayerNorm(cost_dims)
            self.mlp = _mlp(cost_dims, mlp_ratio)
            self.norm2 = nn.LayerNorm(cost_dims)
        else:
            self.fuse = nn.Linear(2 * cost_dims, cost_dims)

    def forward(self, cost: Tensor, patches: Tensor) -> Tensor:
        """(B, K, d, h, w) cost feature, (B, h*w, D) patch features ->
        (B, K, d, h, w)."""
        batch, classes, dims, height, width = cost.shape
        x = cost.permute(0, 1, 3, 4, 2).reshape(batch * classes,
                                                height * width, dims)
        projected = self.patch_proj(patches)
        projected = projected.unsqueeze(1).expand(
            -1, classes, -1, -1).reshape(batch * classes, height * width,
                                         dims)
        fused = torch.cat([x, projected], dim=-1)
        if not self.attention:
            out = x + self.fuse(fused)
        else:
            out = self.norm1(x + self.proj(self._attend(fused, height,
                                                        width)))
            out = self.norm2(out + self.mlp(out))
        return out.reshape(batch, classes, height, width,
                           dims).permute(0, 1, 4, 2, 3)

    def _attend(self, fused: Tensor, height: int, width: int) -> Tensor:
        if self.window_size is None:
            return multi_head_attention(self.q(fused), self.k(fused),
                                        self.v(fused), self.num_heads)
        window = min(self.window_size, height, width)
        grid = fused.reshape(fused.shape[0], height, width, -1)
        windows, layout = window_partition(grid, window)
        attended = multi_head_attention(self.q(windows), self.k(windows),
                                        self.v(windows), self.num_heads)
        return window_merge(attended, window, layout).reshape(
            fused.shape[0], height * width, -1)


@MODELS.register_module()
class TextGuidedAlignment(nn.Module):
    """DCP-CLIP's text-guided alignment (Eqs. 7-12; see the module doc).

    Args:
        embed_dims (int): width of the CLIP patch features and class
            embeddings (D: 512 for ViT-B/16, 768 for ViT-L/14).
        cost_dims (int): width d of the cost feature (128).
        ca (bool): the cross-modal alignment branch (Table IV).
        sa (bool): the self-attention fusion branch (Table IV).
        guidance (dict): parts of Eq. 7: ``text``, ``prompt``, ``cls_logits``
            (Table V), all True by default.
        prompt_mode (str): 'shared' (default) or 'tokens'.
        num_prompt_tokens (int): prompt rows with ``prompt_mode='tokens'``.
        ca_heads (int): heads of the CA branch (8).
        sa_heads (int): heads of the SA branch (4, as CAT-Seg's aggregator).
        mlp_ratio (float): MLP hidden ratio of both branches (4).
        sa_window (int, optional): None = global SA (default), or a window.
        out_proj (bool): output projection W_O in both attentions (True).
    """

    def __init__(self,
                 embed_dims: int = 512,
                 cost_dims: int = 128,
                 ca: bool = True,
                 sa: bool = True,
                 guidance: Optional[dict] = None,
                 prompt_mode: str = 'shared',
                 num_prompt_tokens: int = 4,
                 ca_heads: int = 8,
                 sa_heads: int = 4,
                 mlp_ratio: float = 4.0,
                 sa_window: Optional[int] = None,
                 out_proj: bool = True):
        super().__init__()
        parts = options_with_defaults(
            guidance, dict(text=True, prompt=True, cls_logits=True),
            'TextGuidedAlignment guidance')
        self.ca = ca
        self.sa = sa
        self.guidance = TextualGuidance(
            embed_dims, embed_dims, prompt_mode=prompt_mode,
            num_prompt_tokens=num_prompt_tokens, **parts) if ca else None
        self.cross_attention = CrossModalAlignment(
            embed_dims, embed_dims, ca_heads, mlp_ratio,
            out_proj=out_proj) if ca else None
        self.fusion = CostFusionAttention(
            cost_dims, embed_dims, sa_heads, mlp_ratio, sa_window,
            attention=sa, out_proj=out_proj) if (ca or sa) else None

    def forward(self, cost: Tensor, patches: Tensor, text: Tensor,
                cls_logits: Tensor, valid: Tensor,
                class_chunk_size: Optional[int] = None) -> Tensor:
        """Refine the cost feature of the selected classes.

        Args:
            cost: (B, K, d, h, w) cost feature F_cost.
            patches: (B, D, h, w) or (B, h*w, D) CLIP patch features F_p.
            text: (B, K, D) embeddings of the selected classes.
            cls_logits: (B, K) their [CLS] logits.
            valid: (B, K) bool, False at padding slots.
            class_chunk_size (int, optional): run the SA branch on this many
                classes at a time (each class attends over its own
                positions: the same numbers, less memory).

        Returns:
            (B, K, d, h, w).
        """
        if self.fusion is None:
            return cost
        if patches.dim() == 4:
            patches = patches.flatten(2).transpose(1, 2)
        if self.cross_attention is not None:
            guidance, guidance_valid = self.guidance(text, cls_logits, valid)
            patches = self.cross_attention(patches, guidance, guidance_valid)
        classes = cost.shape[1]
        if class_chunk_size is None or classes <= class_chunk_size:
            return self.fusion(cost, patches)
        return torch.cat([
            self.fusion(cost[:, start:start + class_chunk_size], patches)
            for start in range(0, classes, class_chunk_size)], dim=1)
