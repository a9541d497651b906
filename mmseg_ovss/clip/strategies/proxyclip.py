"""ProxyCLIP (Lan et al., ECCV 2024): proxy attention from a vision model.

A vision foundation model (VFM, DINO ViT-B/8 by default) gives patch
features F; S = cos(F_i, F_j), S' = gamma (S - beta mean(S)) with negative
entries set to -inf, W = softmax(S') (ProxyCLIP Eq. 4-5; beta 1.2, gamma 3).
W is applied to the values of CLIP's last block, bilinearly resized to the
VFM grid; no residual, no FFN. The dense output lives on the VFM grid.

The VFM is built by ``timm`` and loaded from a local file only (DINO's
``dino_vitbase8_pretrain.pth`` or a timm checkpoint); without the file a
clear :class:`OVSSWeightsError` says how to pass it.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mmseg_ovss.clip.attention import project_out, project_qkv
from mmseg_ovss.clip.loading import DEFAULT_RANDOM_INIT_SEED
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSWeightsError
from mmseg_ovss.utils.paths import resolve_data_path

from .base import DENSE_STRATEGIES, DenseStrategy

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def proxy_attention(features: Tensor, beta: float, gamma: float) -> Tensor:
    """W = softmax(S'), S' = gamma (S - beta mean S), negatives -> -inf.

    ``features`` (B, C, N); the mean is taken per image. The diagonal is
    never masked: in a near-uniform window every S' is negative (S ~ mean S
    and beta > 1), and a fully masked row would give NaN; such a token then
    attends to itself only. (The ProxyCLIP code masks every negative entry,
    diagonal included, and returns NaN rows there.)
    """
    feats = F.normalize(features.float(), dim=1)
    sim = torch.einsum('bcm,bcn->bmn', feats, feats)
    sim = (sim - sim.mean(dim=(1, 2), keepdim=True) * beta) * gamma
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill((sim < 0) & ~eye, float('-inf'))
    return sim.softmax(dim=-1)


def build_vfm(model_name: str, checkpoint: Optional[str],
              seed: Optional[int] = DEFAULT_RANDOM_INIT_SEED):
    """Build a timm ViT and load its weights from a local file.

    Without a file the weights are random, drawn with ``seed`` so that every
    process builds the same network (the global RNG is left as it was);
    ``seed=None`` draws from the global RNG.
    """
    import timm
    if checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return timm.create_model(model_name, pretrained=False,
                                     num_classes=0, dynamic_img_size=True)
    path = resolve_data_path(checkpoint, must_exist=False)
    if not path.is_file():
        raise OVSSWeightsError(
            f'ProxyCLIP vision model weights {str(path)!r} not found; '
            'download DINO ViT-B/8 (dino_vitbase8_pretrain.pth) on a machine '
            'with network access and pass its local path as '
            "strategy=dict(type='ProxyCLIP', vfm_checkpoint='/path/to/file')")
    return timm.create_model(
        model_name, pretrained=True, num_classes=0, dynamic_img_size=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=0))


@DENSE_STRATEGIES.register_module(name=['ProxyCLIP', 'ProxyCLIPStrategy'])
class ProxyCLIPStrategy(DenseStrategy):
    """Proxy attention from a VFM applied to CLIP's last-block values.

    Args:
        vfm_checkpoint (str): local VFM weights; required unless
            ``random_init`` (tests, benchmarks).
        vfm_model (str): timm architecture (``vit_base_patch8_224``).
        beta, gamma (float): 1.2 and 3.0 (paper).
        random_init (bool): build the VFM without weights, ignoring
            ``vfm_checkpoint``.
        seed (int, optional): seed of the random VFM weights (the same in
            every process by default, as the CLIP loader's ``seed``).
    """

    def __init__(self, vfm_checkpoint: Optional[str] = None,
                 vfm_model: str = 'vit_base_patch8_224', beta: float = 1.2,
                 gamma: float = 3.0, random_init: bool = False,
                 seed: Optional[int] = DEFAULT_RANDOM_INIT_SEED):
        super().__init__()
        if vfm_checkpoint is None and not random_init:
            raise OVSSWeightsError(
                'ProxyCLIP needs a vision foundation model loaded from a '
                'local file: set vfm_checkpoint to DINO ViT-B/8 weights '
                '(dino_vitbase8_pretrain.pth), or random_init=True to '
                'exercise the path without weights')
        if gamma <= 0:
            raise OVSSConfigError(f'ProxyCLIP gamma must be > 0, got {gamma}')
        # random_init wins over a configured checkpoint (tests, benchmarks)
        self.vfm = build_vfm(vfm_model,
                             None if random_init else vfm_checkpoint,
                             seed).eval()
        self.vfm.requires_grad_(False)
        self.beta = float(beta)
        self.gamma = float(gamma)
        clip_mean, clip_std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        net_mean, net_std = torch.tensor(IMAGENET_MEAN), torch.tensor(
            IMAGENET_STD)
        # x_vfm = (x_clip * std_c + mean_c - mean_i) / std_i
        self.register_buffer('renorm_scale', (clip_std / net_std).view(
            1, 3, 1, 1), persistent=False)
        self.register_buffer('renorm_shift', ((clip_mean - net_mean) /
                                              net_std).view(1, 3, 1, 1),
                             persistent=False)

    def vfm_features(self, images: Tensor) -> Tensor:
        """(B, C, h', w') last-layer patch features of the VFM."""
        patch = self.vfm.patch_embed.patch_size[0]
        h, w = images.shape[-2] // patch, images.shape[-1] // patch
        x = images[..., :h * patch, :w * patch].float()
        x = x * self.renorm_scale + self.renorm_shift
        tokens = self.vfm.forward_features(x.to(self.renorm_scale.dtype))
        tokens = tokens[:, self.vfm.num_prefix_tokens:]
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def forward(self, blocks, inputs, grid_size, images):
        block, x = blocks[-1], inputs[-1]
        _, _, v = project_qkv(block, block.ln_1(x))
        b, heads, _, d = v.shape
        feats = self.vfm_features(images)
        vh, vw = feats.shape[-2:]
        weights = proxy_attention(feats.flatten(2), self.beta, self.gamma)
        v = v[:, :, 1:].reshape(b * heads, *grid_size, d).permute(0, 3, 1, 2)
        v = F.interpolate(v.float(), size=(vh, vw), mode='bilinear',
                          align_corners=False)
        v = v.permute(0, 2, 3, 1).reshape(b, heads, vh * vw, d)
        out = torch.matmul(weights.unsqueeze(1), v).to(x.dtype)
        # Keep a CLS slot so the output layout matches the other strategies.
        cls = x.new_zeros(b, heads, 1, d)
        tokens = project_out(block, torch.cat([cls, out], dim=2))
        return block.ls_1(tokens), (vh, vw)
