"""Load mmengine's own checkpoints on torch >= 2.6 with ``weights_only=True``.

torch 2.6 made ``weights_only=True`` the default of ``torch.load``; mmengine
0.10.7 does not pass the argument, so loading (``--resume``, ``load_from``)
one of its own checkpoints fails on the objects it pickles into ``meta``: the
message hub's ``HistoryBuffer`` (whose statistics methods pickle through
``getattr``) and numpy scalars and arrays. Rather than turning the safe loader
off, mmengine's local-file loader is replaced by one that allow-lists exactly
those types, and only while it loads.
"""
import os.path as osp

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader


def mmengine_checkpoint_globals() -> list:
    """Non-tensor globals found in checkpoints saved by mmengine runners."""
    dtype_classes = [type(np.dtype(t)) for t in (
        np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
        np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)]
    return [HistoryBuffer, getattr, np.ndarray, np.dtype,
            np._core.multiarray._reconstruct, np._core.multiarray.scalar
            ] + dtype_classes


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename, map_location):
    """mmengine's local loader, with the allow-list above for this load."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
        return torch.load(filename, map_location=map_location,
                          weights_only=True)
