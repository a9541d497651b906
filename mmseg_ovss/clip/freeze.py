"""What trains in a CLIP tower: the freeze policies of both towers.

* ``'all'``: nothing (training-free methods, ZegCLIP / CLIP-RC's frozen
  CLIP under trainable prompts);
* ``'none'``: everything;
* ``'attn_qv'``: the query and value projections of every attention block
  (CAT-Seg's ``CLIP_FINETUNE: attention``, ``KU-CVLAB/CAT-Seg``
  cat_seg_model.py), the keys and the rest frozen.

``trainable`` names more parameters (fnmatch patterns relative to the
tower, e.g. ``'ln_post.*'``) that train whatever the policy.
"""
import fnmatch
from typing import List, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from mmseg_ovss.utils.errors import OVSSConfigError

FREEZE_POLICIES = ('all', 'none', 'attn_qv')


class ConcatQKV(nn.Module):
    """Parametrisation of a fused (3C, ...) in-projection as its q, k and v
    parts (three originals), so that each part can be frozen alone."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return torch.cat((q, k, v), dim=0)

    def right_inverse(self, fused: Tensor):
        return tuple(part.clone() for part in fused.chunk(3, dim=0))


def split_qkv_projection(attn: nn.MultiheadAttention) -> None:
    """Split ``attn.in_proj_weight`` (and ``in_proj_bias``) into q, k, v
    parameters (``attn.parametrizations.in_proj_weight.original0/1/2``).

    ``attn.in_proj_weight`` still reads as the fused (3C, C) tensor, so
    ``nn.MultiheadAttention.forward`` and every dense strategy compute the
    same numbers; the parts are separate leaves for the optimiser.
    Idempotent.
    """
    if not isinstance(attn, nn.MultiheadAttention):
        raise OVSSConfigError(
            f'attn_qv needs nn.MultiheadAttention blocks, got '
            f'{type(attn).__name__}')
    if not attn._qkv_same_embed_dim:
        raise OVSSConfigError(
            'attn_qv: this attention already has separate q/k/v weights')
    for name in ('in_proj_weight', 'in_proj_bias'):
        if getattr(attn, name, None) is None or \
                parametrize.is_parametrized(attn, name):
            continue
        parametrize.register_parametrization(attn, name, ConcatQKV(),
                                             unsafe=True)


def qkv_parts(attn: nn.Module, name: str = 'in_proj_weight'):
    """The (q, k, v) parameters of a split in-projection, or None."""
    if not parametrize.is_parametrized(attn, name):
        return None
    originals = attn.parametrizations[name]
    return tuple(getattr(originals, f'original{i}') for i in range(3))


def apply_freeze_policy(module: nn.Module, policy: str = 'all',
                        trainable: Sequence[str] = ()) -> None:
    """Set ``requires_grad`` of every parameter of a CLIP tower.

    Args:
        module: the tower (its parameter names are what ``trainable``
            patterns match).
        policy: one of :data:`FREEZE_POLICIES`.
        trainable: fnmatch patterns of parameter names that train in
            addition; a pattern that matches nothing is an error.
    """
    if policy not in FREEZE_POLICIES:
        raise OVSSConfigError(
            f'unknown freeze policy {policy!r}; use one of {FREEZE_POLICIES}'
            " (with trainable=[name patterns] for more, e.g. 'ln_post.*')")
    if isinstance(trainable, str):
        trainable = [trainable]
    if policy == 'attn_qv':
        attentions = [m for m in module.modules()
                      if isinstance(m, nn.MultiheadAttention)]
        if not attentions:
            raise OVSSConfigError(
                f"freeze='attn_qv': {type(module).__name__} has no "
                'nn.MultiheadAttention block')
        for attn in attentions:
            split_qkv_projection(attn)
    for param in module.parameters():
        param.requires_grad_(policy == 'none')
    if policy == 'attn_qv':
        for attn in attentions:
            for name in ('in_proj_weight', 'in_proj_bias'):
                parts = qkv_parts(attn, name)
                if parts is not None:
                    parts[0].requires_grad_(True)
                    parts[2].requires_grad_(True)
    names = dict(module.named_parameters())
    for pattern in trainable:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            sample = ', '.join(list(names)[:6])
            raise OVSSConfigError(
                f'trainable pattern {pattern!r} matches no parameter of '
                f'{type(module).__name__} (names look like: {sample}, ...)')
        for name in matched:
            names[name].requires_grad_(True)


def frozen_submodules(module: nn.Module) -> List[nn.Module]:
    """The largest submodules of ``module`` (not itself) whose parameters
    are all frozen: what ``train()`` keeps in eval mode. Parameter-free
    leaves (drop path, dropout) are not listed: they follow ``train()``."""
    found = []

    def visit(parent: nn.Module) -> None:
        for child in parent.children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                found.append(child)
            elif params:
                visit(child)
    visit(module)
    return found


def keep_frozen_in_eval(module: nn.Module) -> None:
    """Put :func:`frozen_submodules` of ``module`` in eval mode."""
    for child in frozen_submodules(module):
        child.eval()
