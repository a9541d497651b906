"""Dense strategies: how the last ViT block(s) produce patch features.

Registered in :data:`DENSE_STRATEGIES` under their method name (``'SCLIP'``)
and class name (``'SCLIPStrategy'``); build one with
:func:`build_dense_strategy`.
"""
from mmseg_ovss.utils.errors import OVSSConfigError

from .base import DENSE_STRATEGIES, DenseStrategy, LastBlockStrategy
from .clearclip import ClearCLIPStrategy
from .gem import GEMStrategy
from .maskclip import MaskCLIPStrategy
from .naclip import NACLIPStrategy
from .proxyclip import ProxyCLIPStrategy
from .sclip import SCLIPStrategy
from .vanilla import VanillaStrategy


def build_dense_strategy(cfg) -> DenseStrategy:
    """Build a strategy from a config dict (``type`` = registered name)."""
    if isinstance(cfg, DenseStrategy):
        return cfg
    if isinstance(cfg, str):
        cfg = dict(type=cfg)
    cfg = dict(cfg)
    name = cfg.get('type')
    if name not in DENSE_STRATEGIES.module_dict:
        known = sorted(k for k in DENSE_STRATEGIES.module_dict
                       if not k.endswith('Strategy'))
        raise OVSSConfigError(
            f'unknown dense strategy {name!r}; choose one of {known}')
    cfg.pop('type')
    return DENSE_STRATEGIES.module_dict[name](**cfg)


__all__ = [
    'DENSE_STRATEGIES', 'DenseStrategy', 'LastBlockStrategy',
    'VanillaStrategy', 'MaskCLIPStrategy', 'SCLIPStrategy',
    'ClearCLIPStrategy', 'NACLIPStrategy', 'GEMStrategy',
    'ProxyCLIPStrategy', 'build_dense_strategy'
]
