"""A model-wrapper builder that also works on CPU and for frozen models.

mmengine wraps every model in ``MMDistributedDataParallel`` with
``device_ids=[LOCAL_RANK]`` under a launcher. That breaks on CPU (gloo) and
for training-free segmentors, which have no trainable parameter and which
DDP refuses. This builder picks the right wrapper for the model at hand.
"""
from mmengine.model import (MMDistributedDataParallel,
                            MMSeparateDistributedDataParallel)
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class OVSSDistributedDataParallel:
    """Build the distributed wrapper suited to ``module`` and the device.

    Registered as a model-wrapper type; instantiating it returns

    - ``MMSeparateDistributedDataParallel`` when no parameter is trainable
      (training-free models), which leaves frozen modules unwrapped;
    - ``MMDistributedDataParallel`` without ``device_ids`` on CPU (gloo);
    - ``MMDistributedDataParallel`` on the current GPU otherwise, as mmengine
      does by default.
    """

    def __new__(cls, module, **kwargs):
        if not any(p.requires_grad for p in module.parameters()):
            return MMSeparateDistributedDataParallel(module=module)
        kwargs.setdefault('broadcast_buffers', False)
        first = next(module.parameters())
        if first.is_cuda:
            kwargs.setdefault('device_ids', [first.device.index])
        else:
            kwargs['device_ids'] = None
        return MMDistributedDataParallel(module=module, **kwargs)
