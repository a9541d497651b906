"""Test-time batching of images of different sizes for training-free models.

mmseg's ``SegDataPreProcessor`` requires equal image sizes at test time, or
pads the ground truth together with the images (``test_cfg``), which breaks
the SCLIP-lineage protocol: the ground truth stays at its original size and
the predictions are resized to ``ori_shape`` (SCLIP, Wang et al., ECCV 2024:
``wangf3014/SCLIP`` ``configs/cfg_*.py`` load the annotations after
``Resize``, ``clip_segmentor.py`` interpolates to ``ori_shape``). This
subclass pads only the images.
"""
from typing import Any, Dict

import torch
import torch.nn.functional as F
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.registry import MODELS


@MODELS.register_module()
class OVSSSegDataPreProcessor(SegDataPreProcessor):
    """``SegDataPreProcessor`` whose test batches may mix image sizes.

    At test time images are converted and normalised as usual, then padded
    bottom/right with ``pad_val`` to the largest image of the batch; the
    padding goes to each sample's ``pad_shape`` / ``padding_size``; the
    ground truth is left untouched. Training is unchanged.
    """

    def forward(self, data: dict, training: bool = False) -> Dict[str, Any]:
        if training:
            return super().forward(data, training)
        data = self.cast_data(data)
        inputs = data['inputs']
        samples = data.get('data_samples', None)
        if self.channel_conversion and inputs[0].size(0) == 3:
            inputs = [x[[2, 1, 0], ...] for x in inputs]
        inputs = [x.float() for x in inputs]
        if self._enable_normalize:
            inputs = [(x - self.mean) / self.std for x in inputs]
        height = max(x.shape[-2] for x in inputs)
        width = max(x.shape[-1] for x in inputs)
        padded = []
        for index, x in enumerate(inputs):
            padding = (0, width - x.shape[-1], 0, height - x.shape[-2])
            padded.append(F.pad(x, padding, value=self.pad_val))
            if samples is not None:
                samples[index].set_metainfo(
                    dict(pad_shape=(height, width), padding_size=padding))
        return dict(inputs=torch.stack(padded), data_samples=samples)
