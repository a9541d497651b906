"""ZegCLIP / CLIP-RC segmentor: how the CLIP image tower runs for them.

One segmentor for both methods (CLIP-RC Table 5, first row = ZegCLIP):
``region_bridge=None`` is ZegCLIP (Zhou et al., CVPR 2023), a
:class:`~mmseg_ovss.models.cliprc.region_bridge.RegionLevelBridge` config is
CLIP-RC (Zhang et al., CVPR 2024, Sec. 3.2). The image tower is the
package's frozen ``OpenCLIPViT``; its ``prompts`` hook carries the deep
visual prompts (VPT-deep, K per dataset in the configs).

After the last block, as the authors' code does (``ZiqinZhou66/ZegCLIP``
``models/backbone/img_encoder.py`` ``VPTCLIPVisionTransformer``;
``Jittor/JSeg`` ``clip_encoder_rlb.py``):

1. a NEW trainable LayerNorm (their ``prompt_norm``, eps 1e-6; trainable
   because its name holds their ``exclude_key='prompt'``) on CLS and
   patches; CLIP-RC's code leaves the RLB tokens out of it
   (``final_norm_regions=False``);
2. CLIP's own, frozen ``ln_post`` and projection on every token;
3. L2 normalisation of CLS (G), patches (I) and region tokens (R).

The text embeddings T (frozen CLIP text tower, templates in the configs)
are L2-normalised by the base class.

Parameter groups: the new norm is ``final_norm.*`` (not under
``backbone``); in ZegCLIP's optimiser its name matched the ``'backbone'``
custom key first (lr x10, weight decay kept), so a faithful config gives
``final_norm`` that group explicitly.

Known difference from both authors' codes: their CLS input token is
``2 * class_embedding + pos[0]`` (the class embedding is added again with
the CLS position embedding); the backbone here feeds CLIP's own
``class_embedding + pos[0]``. The RLB tokens start from the latter, as in
JSeg.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.models.segmentors.open_vocab import OpenVocabEncoderDecoder
from mmseg_ovss.utils.errors import OVSSConfigError


@dataclass
class CLIPRCFeatures:
    """What the CLIP-RC / ZegCLIP head gets from the image tower.

    Attributes:
        cls: (B, D) G, the projected, L2-normalised CLS token.
        patches: (B, D, h, w) I, projected, L2-normalised patch tokens.
        regions: (B, M, D) R, projected, L2-normalised RLB tokens
            (row-major over ``region_grid``), or None (ZegCLIP).
        region_grid: (sqrt(M), sqrt(M)), or None.
    """
    cls: Tensor
    patches: Tensor
    regions: Optional[Tensor] = None
    region_grid: Optional[Tuple[int, int]] = None


@MODELS.register_module()
class CLIPRCSegmentor(OpenVocabEncoderDecoder):
    """ZegCLIP (``region_bridge=None``) and CLIP-RC.

    Args:
        region_bridge (dict, optional): a ``RegionLevelBridge`` config
            (``num_tokens``, ``update``, ``patches_see_region``); its width
            is the backbone's. None: ZegCLIP.
        final_norm (bool): the trainable LayerNorm after the last block
            (ZegCLIP's ``prompt_norm``). Default True.
        final_norm_eps (float): its epsilon (1e-6 in the authors' code).
        final_norm_regions (bool): pass the RLB tokens through it too
            (False: CLIP-RC's code, where only ``ln_post`` and the
            projection apply to them).
        **kwargs: :class:`OpenVocabEncoderDecoder` arguments (backbone,
            decode_head, text_encoder, clip, class_names, class_name_map,
            seen_score_offset, train_cfg, test_cfg, data_preprocessor).

    The backbone's last ``out_indices`` entry is the block read (the last
    block by default, JSeg/ZegCLIP ``out_indices=[11]``).
    """

    def __init__(self,
                 backbone: dict,
                 decode_head: dict,
                 region_bridge: Optional[dict] = None,
                 final_norm: bool = True,
                 final_norm_eps: float = 1e-6,
                 final_norm_regions: bool = False,
                 **kwargs):
        super().__init__(backbone=backbone, decode_head=decode_head,
                         **kwargs)
        width = self.backbone.embed_dims
        self.region_bridge = None
        if region_bridge is not None:
            cfg = dict(region_bridge)
            cfg.setdefault('type', 'RegionLevelBridge')
            cfg.setdefault('embed_dims', width)
            self.region_bridge = MODELS.build(cfg)
            visual = self.backbone.visual
            self.region_bridge.init_from_cls(
                visual.class_embedding.detach(),
                visual.positional_embedding[0].detach())
        self.final_norm = nn.LayerNorm(width, eps=final_norm_eps) \
            if final_norm else None
        self.final_norm_regions = bool(final_norm_regions)

    def _finish(self, tokens: Tensor, normed: bool) -> Tensor:
        """Trainable norm (if ``normed``), CLIP's ln_post and projection,
        L2 normalisation over channels."""
        if normed and self.final_norm is not None:
            tokens = self.final_norm(tokens)
        return F.normalize(self.backbone.project(tokens), dim=-1)

    def extract_feat(self, inputs: Tensor) -> CLIPRCFeatures:
        """Run the tower with the prompts (backbone hook) and, for CLIP-RC,
        the RLB tokens and their mask; return G, I, R."""
        bridge = self.region_bridge
        suffix = mask = None
        if bridge is not None:
            suffix = bridge.suffix_tokens()
            mask = bridge.mask_fn(inputs.device, self.backbone.dtype)
        last = self.backbone.out_indices[-1]
        tokens = self.backbone.forward_tokens(
            inputs, suffix_tokens=suffix, attn_mask=mask, out_indices=(last,),
            attention_layers=())
        x = tokens.layers[last]
        layout = tokens.layouts[last]
        batch = x.shape[0]
        cls = self._finish(x[:, 0], normed=True)
        patches = self._finish(x[:, layout.patches], normed=True)
        patches = patches.transpose(1, 2).reshape(batch, -1, *layout.grid)
        regions = grid = None
        if bridge is not None:
            if layout.num_suffix != bridge.num_tokens:
                raise OVSSConfigError(
                    f'the backbone returned {layout.num_suffix} suffix tokens '
                    f'for {bridge.num_tokens} region tokens; a block hook '
                    'must not remove them')
            regions = self._finish(x[:, layout.suffix],
                                   normed=self.final_norm_regions)
            grid = bridge.grid
        return CLIPRCFeatures(cls=cls, patches=patches.contiguous(),
                              regions=regions, region_grid=grid)
