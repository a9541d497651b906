"""PnP-OVSS's annotation-free reward (§3.4, Eqs. 4-5).

For an image I with the class names K(I) it contains (image-level labels, no
masks) and a predicted mask M(k) per class:

    Reward(I) = sum_{k in K(I)} 1[Pr(M(k) (x) I, k) > Pr(0, k)],
    Pr(I, k) = softmax over k' in K(I) of f(I, k'),

f = CLIP ViT-L/14-336 image-text similarity (open_clip, OpenAI weights with
their QuickGELU), 0 a black image.
The text of class k is ``template.format(k)``: the bare class name by default
(the authors' code), e.g. ``'a photo of a {}.'`` as an option.
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from mmseg_ovss.utils.errors import OVSSConfigError

DEFAULT_REWARD_MODEL = 'ViT-L-14-336'
DEFAULT_REWARD_PRETRAINED = 'openai'
DEFAULT_REWARD_TEMPLATE = '{}'


def check_template(template: str) -> str:
    """A prompt with exactly one ``{}`` for the class name."""
    try:
        ok = (isinstance(template, str) and template.count('{}') == 1
              and template.format('x') != template)
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        raise OVSSConfigError(
            f'reward template {template!r} must hold one "{{}}" for the '
            f'class name, e.g. "{{}}" or "a photo of a {{}}.".')
    return template


class ClipReward:
    """Scores masks with an open_clip model.

    The model comes from the package's loader
    (:func:`mmseg_ovss.clip.loading.build_clip_model`), so OpenAI weights run
    with the QuickGELU they were trained with.

    Args:
        model_name: open_clip model name (``ViT-L-14-336``).
        pretrained: open_clip pretrained tag; a path to a local copy of the
            tag's weights (kept for the search tool's
            ``--reward-pretrained``: the activation is that of
            :data:`DEFAULT_REWARD_PRETRAINED`); or None for random weights
            (tests).
        device: where CLIP runs.
        template: prompt of a class name, ``{}`` standing for the name
            (default: the bare name, as the authors).
        checkpoint: a local weights file of the ``pretrained`` tag.
    """

    def __init__(self, model_name: str = DEFAULT_REWARD_MODEL,
                 pretrained: Optional[str] = DEFAULT_REWARD_PRETRAINED,
                 device='cpu', template: str = DEFAULT_REWARD_TEMPLATE,
                 checkpoint: Optional[str] = None):
        check_template(template)
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        from mmseg_ovss.clip.loading import build_clip_model
        if pretrained and checkpoint is None and (
                os.sep in pretrained or osp.isfile(pretrained)):
            checkpoint, pretrained = pretrained, DEFAULT_REWARD_PRETRAINED
        self.model = build_clip_model(
            model_name, pretrained=pretrained, checkpoint=checkpoint,
            device=device,
            random_init=pretrained is None and checkpoint is None,
            local_file_hint='--reward-pretrained /path/to/weights (a local '
            f'copy of the {pretrained or DEFAULT_REWARD_PRETRAINED!r} '
            'weights, e.g. ViT-L-14-336px.pt)')
        self.preprocess = image_transform_v2(
            PreprocessCfg(**self.model.visual.preprocess_cfg), is_train=False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device
        self.template = template
        self._text: Dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_features(self, names: Sequence[str]) -> torch.Tensor:
        missing = [n for n in names if n not in self._text]
        if missing:
            tokens = self.tokenizer([self.template.format(n)
                                     for n in missing]).to(self.device)
            feats = self.model.encode_text(tokens)
            feats = feats / feats.norm(dim=-1, keepdim=True)
            self._text.update(zip(missing, feats))
        return torch.stack([self._text[n] for n in names])

    @torch.no_grad()
    def image_features(self, images: List[np.ndarray]) -> torch.Tensor:
        batch = torch.stack([self.preprocess(Image.fromarray(img))
                             for img in images]).to(self.device)
        feats = self.model.encode_image(batch)
        return feats / feats.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def probabilities(self, images: List[np.ndarray], names: Sequence[str]
                      ) -> torch.Tensor:
        """Eq. 5: (N, K) softmax over the image's class names."""
        scale = self.model.logit_scale.exp()
        logits = scale * self.image_features(images) @ \
            self.text_features(names).T
        return logits.softmax(dim=-1)

    def __call__(self, image: np.ndarray, masks: np.ndarray,
                 names: Sequence[str]) -> int:
        """Eq. 4 for one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            masks: (K, H, W) bool, the predicted mask of each class in
                ``names`` (the image's ground-truth class names).
        """
        if len(names) == 0:
            return 0
        masked = [image * m[..., None].astype(image.dtype) for m in masks]
        black = np.zeros_like(image)
        probs = self.probabilities(masked + [black], names)
        k = torch.arange(len(names))
        return int((probs[k, k] > probs[-1, k]).sum())
