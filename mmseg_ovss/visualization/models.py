"""Build a config's segmentor for one-image tools (``tools/demo.py``,
``tools/freecp_visualize.py``) and feed it one image."""
from typing import Optional, Tuple

import cv2
import numpy as np
import torch

from mmseg_ovss.utils.errors import OVSSConfigError
from mmseg_ovss.utils.paths import resolve_data_path


def load_config(path: str, cfg_options: Optional[dict] = None):
    """The config at ``path`` (resolved like the tools do) with
    ``--cfg-options`` merged; an error naming the file when it has no
    model."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(resolve_data_path(path)))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if not cfg.get('model'):
        raise OVSSConfigError(
            f'config {path} has no model; give a segmentor config (e.g. '
            'configs/freecp/sclip_voc21.py or configs/pnp_ovss/blip_voc20.py)')
    return cfg


def set_clip_weights(cfg, model_name: Optional[str] = None,
                     checkpoint: Optional[str] = None,
                     random_init: bool = False) -> None:
    """Apply ``--model-name`` / ``--checkpoint`` / ``--random-init`` to the
    config's ``model.clip`` (and ProxyCLIP's vision model)."""
    clip = cfg.model.clip
    if model_name:
        clip.model_name = model_name
    if checkpoint:
        clip.checkpoint = checkpoint
    if random_init:
        clip.random_init = True
        backbone = cfg.model.get('backbone') or {}
        for strategy in (backbone.get('dense_strategy'),
                         cfg.model.get('strategy')):  # (the old key)
            if isinstance(strategy, dict) and \
                    strategy.get('type') == 'ProxyCLIP':
                strategy.random_init = True


def build_segmentor(cfg, device: str = 'cpu'):
    """``MODELS.build(cfg.model)`` in eval mode on ``device``."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    import mmseg_ovss  # noqa: F401 (registers the models)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return MODELS.build(cfg.model).to(device).eval()


def preprocess(model, image: np.ndarray, short_side: int
               ) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Resize the short side (keep ratio) and normalise like the configs:
    the (1, 3, H, W) input and its (H, W)."""
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    resized = cv2.resize(image, (max(1, round(w * scale)),
                                 max(1, round(h * scale))),
                         interpolation=cv2.INTER_LINEAR)
    tensor = torch.from_numpy(resized).permute(2, 0, 1).contiguous()
    data = model.data_preprocessor(dict(inputs=[tensor]), False)
    return data['inputs'], resized.shape[:2]


def model_sample(model, image: np.ndarray, short_side: int):
    """The normalised input batch and the SegDataSample of one image
    (labels at the image's own size)."""
    from mmseg.structures import SegDataSample
    inputs, img_shape = preprocess(model, image, short_side)
    sample = SegDataSample(metainfo=dict(
        ori_shape=image.shape[:2], img_shape=img_shape,
        pad_shape=tuple(inputs.shape[-2:]), padding_size=[0, 0, 0, 0]))
    return inputs, sample


def to_bgr(model, pixels: torch.Tensor) -> np.ndarray:
    """Undo the pre-processor on (3, H, W) inputs: (H, W, 3) BGR uint8."""
    pre = model.data_preprocessor
    pixels = pixels.detach().float().cpu()
    mean, std = getattr(pre, 'mean', None), getattr(pre, 'std', None)
    if mean is not None and std is not None:
        pixels = pixels * std.cpu().view(-1, 1, 1) + mean.cpu().view(-1, 1, 1)
    image = pixels.clamp(0, 255).byte().permute(1, 2, 0).numpy()
    if getattr(pre, 'channel_conversion', False):
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)
