"""Mixed-precision training on GPU (fp16) and CPU (bf16) as one switch.

``amp = True`` in a config (or ``tools/train.py --amp``) replaces the
config's ``OptimWrapper`` by :class:`OVSSAmpOptimWrapper`:

- on CUDA it is mmengine's ``AmpOptimWrapper``: autocast to float16 with a
  dynamic loss scale (``torch.cuda.amp.GradScaler``);
- on a machine without CUDA (tests, CPU runs under gloo) it autocasts to
  bfloat16, the only low-precision type of CPU autocast. bfloat16 has
  float32's exponent range, so gradients do not underflow and no loss
  scale is used. mmengine's ``AmpOptimWrapper`` itself refuses to be built
  without a GPU.

``dtype='bfloat16'`` on CUDA also runs without a loss scale. Weights,
gradients and optimiser state stay float32 in every case (autocast casts
the inputs of matrix products and convolutions only).
"""
from contextlib import contextmanager
from typing import Optional, Union

import torch
from mmengine.config import Config
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

from mmseg_ovss.utils.errors import OVSSConfigError

#: The config key read by ``tools/train.py``.
AMP_KEY = 'amp'
#: Optimiser wrappers that :func:`apply_amp` may replace.
_PLAIN_WRAPPERS = ('OptimWrapper', 'AmpOptimWrapper', 'OVSSAmpOptimWrapper')


def default_amp_dtype(device_type: Optional[str] = None) -> torch.dtype:
    """float16 on CUDA, bfloat16 elsewhere."""
    if device_type is None:
        device_type = 'cuda' if torch.cuda.is_available() else 'cpu'
    return torch.float16 if device_type == 'cuda' else torch.bfloat16


@OPTIM_WRAPPERS.register_module()
class OVSSAmpOptimWrapper(AmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper`` that also trains on CPU (bfloat16).

    Args:
        loss_scale (str | float | dict): the ``GradScaler`` set-up of
            float16 training ('dynamic' by default); unused for bfloat16.
        dtype (str | torch.dtype, optional): autocast type; default float16
            on CUDA, bfloat16 on CPU (the only type CPU autocast offers).
        use_fsdp (bool): as ``AmpOptimWrapper``.
        **kwargs: ``OptimWrapper`` arguments (optimizer, clip_grad,
            accumulative_counts).
    """

    def __init__(self,
                 loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Union[None, str, torch.dtype] = None,
                 use_fsdp: bool = False,
                 **kwargs):
        self.device_type = 'cuda' if torch.cuda.is_available() else 'cpu'
        if isinstance(dtype, str):
            if dtype not in self.valid_dtypes:
                raise OVSSConfigError(
                    f'optim_wrapper.dtype={dtype!r}: use one of '
                    f'{self.valid_dtypes}')
            dtype = getattr(torch, dtype)
        dtype = dtype or default_amp_dtype(self.device_type)
        if self.device_type == 'cpu' and dtype != torch.bfloat16:
            raise OVSSConfigError(
                f'mixed precision on CPU autocasts to bfloat16 only, got '
                f'optim_wrapper.dtype={dtype}; remove dtype (or set '
                "'bfloat16')")
        if self.device_type == 'cuda' and dtype == torch.float16:
            super().__init__(loss_scale=loss_scale, dtype=dtype,
                             use_fsdp=use_fsdp, **kwargs)
            return
        # bfloat16: float32's range, no loss scale
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        self.loss_scaler = None
        self.cast_dtype = dtype

    @property
    def uses_loss_scale(self) -> bool:
        return self.loss_scaler is not None

    def backward(self, loss: torch.Tensor, **kwargs):
        if self.loss_scaler is None:
            return OptimWrapper.backward(self, loss, **kwargs)
        return super().backward(loss, **kwargs)

    def step(self, **kwargs):
        if self.loss_scaler is None:
            return OptimWrapper.step(self, **kwargs)
        return super().step(**kwargs)

    def state_dict(self) -> dict:
        if self.loss_scaler is None:
            return OptimWrapper.state_dict(self)
        return super().state_dict()

    def load_state_dict(self, state_dict: dict):
        if self.loss_scaler is None:
            # a checkpoint of a float16 run resumed in bfloat16: the scale
            # has no use here
            state_dict = dict(state_dict)
            state_dict.pop('loss_scaler', None)
            if 'base_param_settings' in state_dict:
                self.base_param_settings = state_dict.pop(
                    'base_param_settings')
            return self.optimizer.load_state_dict(state_dict)
        return super().load_state_dict(state_dict)

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        with OptimWrapper.optim_context(self, model), torch.autocast(
                device_type=self.device_type, dtype=self.cast_dtype):
            yield


def apply_amp(cfg: Config, enabled: bool = False) -> Optional[str]:
    """Switch the config's optimiser wrapper to mixed precision when
    ``enabled`` (``--amp``) or ``cfg.amp`` is true; returns the sentence to
    log (None when mixed precision is off)."""
    requested = cfg.get(AMP_KEY, False)
    if not isinstance(requested, bool):
        raise OVSSConfigError(
            f'{AMP_KEY}={requested!r}: use True (mixed precision: float16 '
            'on GPU, bfloat16 on CPU) or False; set the type with '
            "optim_wrapper.dtype='bfloat16'")
    if not (enabled or requested):
        return None
    wrapper = cfg.get('optim_wrapper')
    if not wrapper:
        raise OVSSConfigError('mixed precision needs an optim_wrapper in the '
                              'config')
    kind = wrapper.get('type', 'OptimWrapper')
    if kind not in _PLAIN_WRAPPERS:
        raise OVSSConfigError(
            f'mixed precision replaces optim_wrapper.type; {kind!r} is not '
            f'one of {_PLAIN_WRAPPERS}. Set amp = False and give that '
            'wrapper its own mixed-precision set-up.')
    wrapper.type = 'OVSSAmpOptimWrapper'
    device_type = 'cuda' if torch.cuda.is_available() else 'cpu'
    dtype = wrapper.get('dtype') or str(default_amp_dtype(device_type)
                                        ).replace('torch.', '')
    wrapper.dtype = dtype
    if dtype == 'float16':
        wrapper.setdefault('loss_scale', 'dynamic')
        scale = f"loss scale {wrapper['loss_scale']}"
    else:
        scale = 'no loss scale'
    return (f'mixed precision on {device_type}: autocast to {dtype}, '
            f'{scale}, float32 weights')
