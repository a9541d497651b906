"""The segmentor of the cost-volume methods (CAT-Seg, DCP-CLIP).

:class:`CostVolumeSegmentor` runs the CLIP image tower once per batch the
way CAT-Seg does (``KU-CVLAB/CAT-Seg`` ``cat_seg/cat_seg_model.py`` and
``cat_seg/third_party/model_vpt.py``):

- the input is resized to the CLIP resolution (384x384 for ViT-B/16,
  336x336 for ViT-L/14: a 24x24 patch grid), position embeddings resized
  bicubically;
- blocks 0..L-2 run as usual (their q/v projections fine-tuned,
  ``freeze='attn_qv'`` of both towers);
- the last block runs its value path on every token
  (``ResidualAttentionBlock.forward_dense``): ``y = x_res + out_proj(v(
  ln_1(x)))``, ``y + mlp(ln_2(y))``, where CAT-Seg's residual ``x_res`` is
  the CLS token's input for every token (``dense_residual='cls'``; a
  token's own input is ``'self'``). ``ln_post`` and the projection give
  the dense features;
- the patch tokens of ``guidance_layers`` (0-based 3 and 7 for ViT-B/16,
  7 and 15 for ViT-L/14) are the decoder guidance;
- the CLS embedding (for DCP-CLIP's image-level scores) is the unmodified
  last block's CLS (``cls_source='clip'``) or the dense one.

Inference (``test_cfg.mode``): ``'whole'`` (mmseg; the image resized to the
CLIP resolution, CAT-Seg's ``TEST.SLIDING_WINDOW: False``), ``'slide'``
(mmseg's sliding windows, each resized to the CLIP resolution), or
``'catseg_ensemble'``, CAT-Seg's ``inference_sliding_window`` used by its
``eval.sh``: the image resized to ``ensemble_size`` (640x640), overlapping
``kernel``-sized windows (384, overlap 0.333: a 2x2 grid) and the whole
image resized to ``kernel`` run as one batch; window scores (sigmoid of the
logits resized to the window) are averaged where they overlap, then
averaged with the whole-image scores, and the fused ``ensemble_size`` map
resized once, straight to the original image size (the authors'
``sem_seg_postprocess(outputs[0], out_res, height, width)``): the ensemble's
scores are at each image's ``ori_shape``, and :meth:`postprocess_result`
only flips them back.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.structures import PixelData
from mmseg.models.utils import resize
from mmseg.structures import SegDataSample
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.clip.attention import cls_block_forward, mlp_forward
from mmseg_ovss.clip.freeze import qkv_parts
from mmseg_ovss.models.backbones.open_clip_vit import block_indices
from mmseg_ovss.models.catseg.compact_labels import compact_argmax
from mmseg_ovss.models.catseg.features import CLIPDenseFeatures
from mmseg_ovss.models.dcpclip.category_selection import (
    CategorySelection, scatter_classes)
from mmseg_ovss.models.segmentors.clip_segmentor import (SegLogitsStore,
                                                         _budget_mb)
from mmseg_ovss.models.segmentors.open_vocab import OpenVocabEncoderDecoder
from mmseg_ovss.utils.errors import OVSSConfigError, options_with_defaults

DENSE_RESIDUALS = ('cls', 'self')
CLS_SOURCES = ('clip', 'dense')
ATTENTION_FORMS = ('cls', 'full')
TEST_MODES = ('whole', 'slide', 'catseg_ensemble')


def catseg_dense_block(block: nn.Module, x: Tensor,
                       residual: str = 'cls') -> Tensor:
    """CAT-Seg's dense last block on (B, N, width) batch-first tokens.

    Every token's output is its own value path, no attention mixing:
    ``y = r + ls_1(out_proj(W_v ln_1(x) + b_v))``, ``y + ls_2(mlp(ln_2(y)))``
    with ``r`` the CLS input ``x[:, :1]`` (``residual='cls'``, the authors'
    ``forward_dense``) or ``x`` itself (``'self'``).
    """
    if residual not in DENSE_RESIDUALS:
        raise OVSSConfigError(
            f'dense_residual={residual!r}; use one of {DENSE_RESIDUALS}')
    attn = block.attn
    width = x.shape[-1]
    bias = attn.in_proj_bias
    value = F.linear(block.ln_1(x), attn.in_proj_weight[2 * width:],
                     None if bias is None else bias[2 * width:])
    base = x[:, :1] if residual == 'cls' else x
    y = base + block.ls_1(attn.out_proj(value))
    return y + block.ls_2(mlp_forward(block.mlp, block.ln_2(y)))


def _size_pair(value, what: str) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and
                                  not isinstance(v, bool) and v > 0
                                  for v in value):
        raise OVSSConfigError(
            f'{what}={value!r} must be a positive int or (height, width)')
    return value


@MODELS.register_module()
class CostVolumeSegmentor(OpenVocabEncoderDecoder):
    """CLIP towers and a cost-volume head (CAT-Seg, DCP-CLIP).

    Args:
        backbone, decode_head, text_encoder, clip, class_names,
            class_name_map, class_name_synonyms, seen_score_offset,
            train_cfg, data_preprocessor, init_cfg: as
            :class:`OpenVocabEncoderDecoder`. CAT-Seg fine-tunes
            both towers' attention q/v (``freeze='attn_qv'``).
        guidance_layers (Sequence[int]): 0-based blocks whose patch tokens
            guide the decoder, shallowest first ((3, 7) ViT-B/16, (7, 15)
            ViT-L/14).
        dense_residual (str): residual of the dense last block, ``'cls'``
            (CAT-Seg's code) or ``'self'``.
        cls_source (str): ``'clip'`` (the unmodified last block's CLS) or
            ``'dense'`` (the dense block's CLS output).
        attention_layers (Sequence[int]): blocks whose attention weights go
            to the head (DCP-CLIP's decoder; none for CAT-Seg).
        attention_form (str): ``'cls'``: (B, h*w) head-averaged weights of
            the CLS query on the patches; ``'full'``: (B, heads, N, N).
        clip_resolution (int | tuple, optional): inputs are resized
            (bilinear) to this before the image tower (384 ViT-B/16, 336
            ViT-L/14); None keeps the input size.
        train_qv_bias (bool): with ``freeze='attn_qv'``, also train the q/v
            biases. CAT-Seg's code trains the q/v weights only (False).
        seg_logits (dict, optional): what ``seg_logits`` holds when the
            labels come from the selected classes (:meth:`predict`):
            ``max_mb`` (512; None: no limit; 0: nothing), the convention of
            ``CLIPDenseSegmentor`` (:class:`SegLogitsStore`).
        test_cfg (dict): ``mode`` 'whole', 'slide' (mmseg's ``crop_size``,
            ``stride``) or 'catseg_ensemble' (``kernel=384``,
            ``overlap=0.333``, ``ensemble_size=(640, 640)``).
    """
    test_modes = TEST_MODES

    def __init__(self,
                 backbone: dict,
                 decode_head: dict,
                 text_encoder: Optional[dict] = None,
                 clip: Optional[dict] = None,
                 class_names=None,
                 class_name_map=None,
                 class_name_synonyms: str = 'whole',
                 seen_score_offset: float = 0.0,
                 guidance_layers: Sequence[int] = (3, 7),
                 dense_residual: str = 'cls',
                 cls_source: str = 'clip',
                 attention_layers: Sequence[int] = (),
                 attention_form: str = 'cls',
                 clip_resolution: Union[None, int, Sequence[int]] = None,
                 train_qv_bias: bool = False,
                 seg_logits: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(
            backbone=backbone, decode_head=decode_head,
            text_encoder=text_encoder, clip=clip, class_names=class_names,
            class_name_map=class_name_map,
            class_name_synonyms=class_name_synonyms,
            seen_score_offset=seen_score_offset, train_cfg=train_cfg,
            test_cfg=test_cfg, data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        if dense_residual not in DENSE_RESIDUALS:
            raise OVSSConfigError(
                f'dense_residual={dense_residual!r}; use one of '
                f'{DENSE_RESIDUALS}')
        if cls_source not in CLS_SOURCES:
            raise OVSSConfigError(
                f'cls_source={cls_source!r}; use one of {CLS_SOURCES}')
        if attention_form not in ATTENTION_FORMS:
            raise OVSSConfigError(
                f'attention_form={attention_form!r}; use one of '
                f'{ATTENTION_FORMS}')
        if getattr(self.backbone, 'prompts', None) is not None:
            raise OVSSConfigError(
                'CostVolumeSegmentor runs the last CLIP block itself and '
                'does not insert visual prompts: build the backbone with '
                'prompts=None')
        num_layers = self.backbone.num_layers
        if num_layers < 2:
            raise OVSSConfigError(
                'CostVolumeSegmentor needs a ViT of at least 2 blocks')
        self.guidance_layers = tuple(block_indices(
            guidance_layers, num_layers, 'guidance_layers'))
        self.attention_layers = tuple(block_indices(
            attention_layers, num_layers, 'attention_layers'))
        self.dense_residual = dense_residual
        self.cls_source = cls_source
        self.attention_form = attention_form
        self.clip_resolution = _size_pair(clip_resolution, 'clip_resolution')
        self.train_qv_bias = bool(train_qv_bias)
        logits_cfg = options_with_defaults(seg_logits, dict(max_mb=512.0),
                                           'seg_logits')
        self.seg_logits_max_mb = _budget_mb(logits_cfg['max_mb'],
                                            'seg_logits.max_mb')
        if not self.train_qv_bias:
            self._freeze_qv_biases()
        self.test_cfg = ConfigDict(self.test_cfg)
        mode = self.test_cfg.get('mode', 'whole')
        if mode not in TEST_MODES:
            raise OVSSConfigError(
                f'test_cfg.mode={mode!r}; use one of {TEST_MODES}')
        if mode == 'slide' and not {'crop_size', 'stride'} <= set(
                self.test_cfg):
            raise OVSSConfigError(
                "test_cfg mode='slide' needs crop_size and stride (mmseg's "
                'sliding-window inference)')
        if mode == 'catseg_ensemble':
            self._ensemble_geometry()  # checks the values

    def _freeze_qv_biases(self) -> None:
        """CAT-Seg's ``CLIP_FINETUNE: attention`` trains the q/v weights of
        each attention, not the fused in-projection bias."""
        for tower in (self.backbone, self.text_encoder):
            if getattr(tower, 'freeze', None) != 'attn_qv':
                continue
            for module in tower.modules():
                if not isinstance(module, nn.MultiheadAttention):
                    continue
                parts = qkv_parts(module, 'in_proj_bias')
                if parts is not None:
                    for part in parts:
                        part.requires_grad_(False)

    # -------------------------------------------------------- features
    def clip_inputs(self, inputs: Tensor) -> Tensor:
        """Inputs resized to ``clip_resolution`` (bilinear)."""
        if self.clip_resolution is None or \
                tuple(inputs.shape[-2:]) == self.clip_resolution:
            return inputs
        return F.interpolate(inputs, size=self.clip_resolution,
                             mode='bilinear', align_corners=False)

    def extract_feat(self, inputs: Tensor) -> CLIPDenseFeatures:
        """Dense CLIP features of the batch (one pass of the tower)."""
        backbone = self.backbone
        last = backbone.num_layers - 1
        images = self.clip_inputs(inputs)
        tokens = backbone.forward_tokens(
            images, out_indices=(*self.guidance_layers, last - 1),
            attention_layers=self.attention_layers,
            attention_heads='mean' if self.attention_form == 'cls' else None)
        x = tokens.layers[last - 1]
        layout = tokens.layouts[last - 1]
        block = backbone.blocks[last]
        dense = catseg_dense_block(block, x, self.dense_residual)
        patches = backbone.project(dense[:, layout.patches]).float()
        patches = patches.transpose(1, 2).reshape(
            x.shape[0], -1, *layout.grid)
        if self.cls_source == 'clip':
            cls = backbone.project(cls_block_forward(block, x)[:, 0])
        else:
            cls = backbone.project(dense[:, 0])
        guidance = {index: tokens.patch_map(index).float()
                    for index in self.guidance_layers}
        attention = {}
        for index, weights in tokens.attn_weights.items():
            if self.attention_form == 'cls':
                weights = weights[:, 0, 0, layout.patches]
            attention[index] = weights.float()
        return CLIPDenseFeatures(patches=patches, cls=cls.float(),
                                 guidance=guidance, attention=attention)

    # ------------------------------------------------------- inference
    def _ensemble_geometry(self):
        cfg = self.test_cfg
        kernel = cfg.get('kernel', 384)
        if isinstance(kernel, bool) or not isinstance(kernel, int) or \
                kernel < 1:
            raise OVSSConfigError(
                f'test_cfg.kernel={kernel!r} must be a positive int (384)')
        overlap = float(cfg.get('overlap', 0.333))
        if not 0.0 <= overlap < 1.0:
            raise OVSSConfigError(
                f'test_cfg.overlap={overlap!r} must be in [0, 1)')
        size = _size_pair(cfg.get('ensemble_size', (640, 640)),
                          'test_cfg.ensemble_size')
        stride = max(1, int(kernel * (1 - overlap)))
        for side in size:
            if side < kernel or (side - kernel) % stride:
                raise OVSSConfigError(
                    f'test_cfg: ensemble_size={size} is not tiled by '
                    f'{kernel}-pixel windows at stride {stride} (kernel * '
                    f'(1 - overlap)); CAT-Seg uses 640, 384 and 0.333')
        return kernel, stride, size

    def inference(self, inputs: Tensor, batch_img_metas: List[dict]
                  ) -> Tensor:
        if self.test_cfg.get('mode', 'whole') == 'catseg_ensemble':
            return self.ensemble_inference(inputs, batch_img_metas)
        return super().inference(inputs, batch_img_metas)

    def view_scores(self, views: Tensor) -> Tuple[Tensor, object]:
        """((V, C, k, k) sigmoid scores, head state) of (V, 3, k, k) views:
        logits resized to the view, then the sigmoid (CAT-Seg's order).
        A head with ``view_scores(inputs, size)`` (DCP-CLIP: on the
        selected classes only) computes them itself."""
        inputs = self.head_inputs(views)
        head = self.decode_head
        if hasattr(head, 'view_scores'):
            return head.view_scores(inputs, views.shape[-2:])
        state = head.forward_state(inputs)
        logits = resize(state.logits, size=views.shape[-2:],
                        mode='bilinear', align_corners=self.align_corners)
        return logits.sigmoid(), state

    @staticmethod
    def union_slots(slot_scores: Tensor, state, batch: int,
                    num_windows: int):
        """(V, K, k, k) scores of each view's selected classes -> (V, Ku,
        k, k) scores of the union of the classes the views of its image
        selected (``unselected_score`` where a view did not select a union
        class), and that union as a :class:`CategorySelection`.

        Views are ordered as in :meth:`ensemble_inference`: the windows of
        image 0, 1, ..., then the whole images. Everything after this runs
        on Ku <= C classes; only the final fill touches all C."""
        selection = state.selection
        views, width = selection.index.shape
        device = slot_scores.device
        image_of_view = torch.cat([
            torch.arange(batch, device=device).repeat_interleave(
                num_windows), torch.arange(batch, device=device)])
        union = torch.zeros(batch, selection.mask.shape[1],
                            dtype=torch.int32, device=device)
        union.index_add_(0, image_of_view, selection.mask.to(torch.int32))
        union = CategorySelection.from_mask(union > 0)
        slots = torch.arange(width, device=device).expand(views, -1)
        position = torch.full_like(selection.mask, width, dtype=torch.long)
        position.scatter_(1, selection.index, torch.where(
            selection.valid, slots, torch.full_like(slots, width)))
        wanted = position.gather(1, union.index[image_of_view])
        k = slot_scores.shape[-2:]
        fill = slot_scores.new_full((views, 1, *k),
                                    state.unselected_score)
        padded = torch.cat([slot_scores, fill], dim=1)
        return padded.gather(1, wanted[:, :, None, None].expand(
            -1, -1, *k)), union

    def validate_ensemble(self, out: Tensor, state, regions: list,
                          num_windows: int) -> Tensor:
        """Tag validation (DCP-CLIP Eq. 17) of the fused ensemble scores,
        once per image on its final label map (the unpadded region of
        ``out``), with the dense CLIP features of the whole-image view and,
        as the classes re-scoring may choose (``candidates='selected'``),
        the classes any of the image's views selected. A head without
        ``validate_tags`` (CAT-Seg) or without tag validation: unchanged.
        """
        head = self.decode_head
        if getattr(head, 'tag_validation', None) is None or \
                not hasattr(head, 'validate_tags'):
            return out
        features, candidates = self.ensemble_tag_inputs(
            state, len(regions), num_windows)
        validated = [head.validate_tags(
            out[i:i + 1, :, top:bottom, left:right], features[i:i + 1],
            state.text, candidate_mask=candidates[i:i + 1])
            for i, (top, bottom, left, right) in enumerate(regions)]
        if all(v.shape[-2:] == out.shape[-2:] for v in validated):
            return torch.cat(validated)
        out = out.clone()
        for i, (top, bottom, left, right) in enumerate(regions):
            out[i:i + 1, :, top:bottom, left:right] = validated[i]
        return out

    @staticmethod
    def ensemble_tag_inputs(state, batch: int, num_windows: int
                            ) -> Tuple[Tensor, Tensor]:
        """Tag validation's inputs under the ensemble: the (B, D, h, w)
        dense CLIP features of the whole-image views and the (B, C) classes
        any view of each image selected (views ordered as in
        :meth:`ensemble_inference`)."""
        mask = state.selection.mask
        candidates = mask[:batch * num_windows].view(
            batch, num_windows, -1).any(1) | mask[batch * num_windows:]
        return state.visual.patches[batch * num_windows:], candidates

    def ensemble_inference(self, inputs: Tensor,
                           batch_img_metas: List[dict]) -> Tensor:
        """CAT-Seg's window + whole-image ensemble (module docstring) of
        each image's unpadded region, calibrated; (B, C, H, W) scores with
        image i at its original size in ``[:H_i, :W_i]`` (``ori_shape``;
        H, W the largest of the batch), zero elsewhere
        (:meth:`ensemble_sizes`)."""
        out, union, state, regions, count = self.ensemble_fused(
            inputs, batch_img_metas)
        if union is not None:
            out = scatter_classes(out, union, state.num_classes,
                                  self.decode_head.unselected_score()) * \
                self.inside_regions(out, regions)
        out = self.validate_ensemble(out, state, regions, count)
        return self.calibrate(out)

    @staticmethod
    def inside_regions(out: Tensor, regions: list) -> Tensor:
        """(B, 1, H, W): 1 on each image's unpadded region, 0 on padding."""
        inside = out.new_zeros((out.shape[0], 1, *out.shape[-2:]))
        for i, (top, bottom, left, right) in enumerate(regions):
            inside[i, :, top:bottom, left:right] = 1
        return inside

    @staticmethod
    def ensemble_sizes(batch_img_metas, regions: list) -> List[tuple]:
        """The (H_i, W_i) each image's fused ensemble map is resized to:
        its ``ori_shape`` (the size of its unpadded region without
        one)."""
        return [tuple(meta['ori_shape'][:2]) if 'ori_shape' in meta else
                (bottom - top, right - left)
                for meta, (top, bottom, left, right) in zip(batch_img_metas,
                                                            regions)]

    def ensemble_fused(self, inputs: Tensor, batch_img_metas) -> tuple:
        """The fused ensemble scores before the fill, tag validation and
        calibration: ((B, C | Ku, H, W) scores, image i at its original
        size in ``[:H_i, :W_i]`` (:meth:`ensemble_sizes`), zero elsewhere;
        the union :class:`CategorySelection` of each image's view classes
        (None when the head scores all classes); head state; each image's
        ``(0, H_i, 0, W_i)`` region of the scores; windows per image)."""
        kernel, stride, size = self._ensemble_geometry()
        b, _, height, width = inputs.shape
        regions = []
        for image, meta in zip(inputs, batch_img_metas):
            # mmseg's stack_batch records 'img_padding_size' (test time),
            # OVSSSegDataPreProcessor 'padding_size'
            left, right, top, bottom = meta.get(
                'img_padding_size', meta.get('padding_size', (0, 0, 0, 0)))
            regions.append((top, height - bottom, left, width - right))
        crops = [inputs[i:i + 1, :, r[0]:r[1], r[2]:r[3]]
                 for i, r in enumerate(regions)]
        resized = torch.cat([F.interpolate(c, size=size, mode='bilinear',
                                           align_corners=False)
                             for c in crops])
        whole = torch.cat([F.interpolate(c, size=(kernel, kernel),
                                         mode='bilinear',
                                         align_corners=False)
                           for c in crops])
        windows = F.unfold(resized, kernel, stride=stride)  # (B, 3kk, L)
        count = windows.shape[-1]
        windows = windows.transpose(1, 2).reshape(
            b * count, inputs.shape[1], kernel, kernel)
        scores, state = self.view_scores(torch.cat([windows, whole]))
        union = None
        if getattr(state, 'unselected_score', None) is not None and \
                state.class_index is not None:
            # a head that returns the scores of its selected classes only
            # (DCP-CLIP): fuse on the union of each image's view classes
            scores, union = self.union_slots(scores, state, b, count)
        classes = scores.shape[1]
        local = scores[:b * count].reshape(b, count, -1).transpose(1, 2)
        local = F.fold(local, size, kernel, stride=stride)
        ones = torch.ones((1, 1, *size), dtype=scores.dtype,
                          device=scores.device)
        coverage = F.fold(F.unfold(ones, kernel, stride=stride), size,
                          kernel, stride=stride)
        whole = F.interpolate(scores[b * count:], size=size,
                              mode='bilinear', align_corners=False)
        fused = (local / coverage + whole) / 2  # (B, C | Ku, *size)
        sizes = self.ensemble_sizes(batch_img_metas, regions)
        out = fused.new_zeros((b, classes, max(h for h, _ in sizes),
                               max(w for _, w in sizes)))
        for i, (h, w) in enumerate(sizes):
            # one resize, straight to the original size (CAT-Seg's
            # sem_seg_postprocess of the out_res map)
            out[i:i + 1, :, :h, :w] = F.interpolate(
                fused[i:i + 1], size=(h, w), mode='bilinear',
                align_corners=False)
        return out, union, state, [(0, h, 0, w) for h, w in sizes], count

    # ------------------------------------------- labels on selected classes
    def selected_inference(self, inputs: Tensor, batch_img_metas: List[dict]
                           ) -> Optional[Tuple[Tensor, object]]:
        """((B, 1 + Ku, H, W) scores: channel 0 the score map of every
        unselected class, then the selected (union) slots; their
        :class:`CategorySelection`); (the (B, C, H, W) scores, None) where
        the head scored all classes in ``mode='whole'``; None where the
        full scores are needed (:meth:`inference`).

        Tag validation (DCP-CLIP Eq. 17) runs on these scores as
        :meth:`inference` runs it on the full ones (``mode='whole'``: the
        batch at the input size, padding included, as the head's
        ``predict``; the ensemble: each image's unpadded region, as
        :meth:`validate_ensemble`), through the head's
        ``validate_compact``: the slots then include the classes whose
        scores it swapped.

        The full scores are needed where no single map stands for every
        unselected class, or where the labels are not one argmax of the
        scores resized: a head without ``predict_slots`` (CAT-Seg) or
        ``validate_compact``; calibration with a seen-score offset (seen
        and unseen unselected classes differ); ``mode='slide'`` (windows
        are validated and averaged one by one); a one-class vocabulary
        (thresholded, not an argmax); an ensemble of all-class views."""
        head = self.decode_head
        mode = self.test_cfg.get('mode', 'whole')
        calibrates = bool(self.seen_score_offset) and \
            self.zero_shot_split is not None and \
            bool(self.zero_shot_split[1])
        validates = getattr(head, 'tag_validation', None) is not None
        if (validates and not hasattr(head, 'validate_compact')) or \
                not hasattr(head, 'predict_slots') or calibrates or \
                mode == 'slide' or self.num_classes < 2:
            return None
        fill = head.unselected_score()
        if mode == 'catseg_ensemble':
            out, union, state, regions, count = self.ensemble_fused(
                inputs, batch_img_metas)
            if union is None:
                return None
            fill_map = self.inside_regions(out, regions) * fill
            scores = torch.cat([fill_map, out], dim=1)
            if not validates:
                return scores, union
            features, candidates = self.ensemble_tag_inputs(
                state, len(regions), count)
            return head.validate_compact(scores, union, features,
                                         state.text, candidates, regions)
        slots, state = head.predict_slots(self.head_inputs(inputs),
                                          batch_img_metas)
        if state.class_index is None:  # the slots are all C classes
            if validates:
                slots = head.validate_tags(slots, state.visual.patches,
                                           state.text, state.selection.mask)
            return slots, None
        scores = torch.cat([slots.new_full((slots.shape[0], 1,
                                            *slots.shape[-2:]), fill),
                            slots], dim=1)
        if not validates:
            return scores, state.selection
        return head.validate_compact(scores, state.selection,
                                     state.visual.patches, state.text,
                                     state.selection.mask)

    def predict(self, inputs: Tensor, data_samples=None):
        """mmseg's ``predict``; with a head that selects classes (DCP-CLIP)
        the labels come from the selected classes (O(K) per pixel,
        :func:`~mmseg_ovss.models.catseg.compact_labels.compact_argmax`),
        tag-validated there (:meth:`selected_inference`): the same labels
        as the argmax of the scores filled to all C classes. ``seg_logits``
        holds the full (C, H, W) scores within ``seg_logits.max_mb``
        (:class:`SegLogitsStore`: every s-th pixel past it, nothing at
        0)."""
        if data_samples is not None:
            metas = [sample.metainfo for sample in data_samples]
        else:
            metas = [dict(ori_shape=inputs.shape[2:],
                          img_shape=inputs.shape[2:],
                          pad_shape=inputs.shape[2:],
                          padding_size=[0, 0, 0, 0])] * inputs.shape[0]
        selected = self.selected_inference(inputs, metas)
        if selected is None:
            return self.postprocess_result(self.inference(inputs, metas),
                                           data_samples)
        scores, selection = selected
        if selection is None:
            return self.postprocess_result(scores, data_samples)
        if data_samples is None:
            data_samples = [SegDataSample() for _ in range(len(metas))]
        for i, sample in enumerate(data_samples):
            image = self.original_view(scores, i, metas[i])
            has_unselected = bool((~selection.mask[i]).any())
            labels = compact_argmax(
                image[:, 1:], selection.index[i:i + 1],
                selection.valid[i:i + 1], selection.mask[i:i + 1],
                image[:, :1] if has_unselected else None)
            sample.set_data({'pred_sem_seg': PixelData(data=labels)})
            logits = self.store_seg_logits(image, selection, i)
            if logits is not None:
                sample.set_data({'seg_logits': logits})
        return data_samples

    def original_view(self, scores: Tensor, i: int, meta: dict) -> Tensor:
        """(1, C', ori H, ori W) scores of image ``i`` of a batch's
        inference output, flipped back: mmseg's padding crop and resize to
        ``ori_shape``, or, under the ensemble (already at ``ori_shape``,
        :meth:`ensemble_fused`), its ``[:H_i, :W_i]`` part."""
        height, width = scores.shape[-2:]
        ensemble = self.test_cfg.get('mode', 'whole') == 'catseg_ensemble'
        if ensemble:
            h, w = meta['ori_shape'][:2]
            image = scores[i:i + 1, :, :h, :w]
        else:
            left, right, top, bottom = meta.get(
                'img_padding_size', meta.get('padding_size', [0] * 4))
            image = scores[i:i + 1, :, top:height - bottom,
                           left:width - right]
        if meta.get('flip', None):
            direction = meta.get('flip_direction', None)
            if direction not in ('horizontal', 'vertical'):
                raise OVSSConfigError(
                    f'flip_direction={direction!r}; mmseg flips '
                    "'horizontal' or 'vertical'")
            image = image.flip(dims=(3,) if direction == 'horizontal'
                               else (2,))
        if ensemble:
            return image
        return resize(image, size=meta['ori_shape'], mode='bilinear',
                      align_corners=self.align_corners, warning=False)

    def postprocess_result(self, seg_logits: Tensor, data_samples=None):
        """mmseg's ``postprocess_result``; under the ensemble the scores
        are at each image's original size already (:meth:`ensemble_fused`),
        so they are cut out and flipped back, not resized again."""
        if data_samples is None or \
                self.test_cfg.get('mode', 'whole') != 'catseg_ensemble':
            return super().postprocess_result(seg_logits, data_samples)
        for i, sample in enumerate(data_samples):
            image = self.original_view(seg_logits, i, sample.metainfo)
            result = super().postprocess_result(image)[0]
            sample.set_data({'seg_logits': result.seg_logits,
                             'pred_sem_seg': result.pred_sem_seg})
        return data_samples

    def store_seg_logits(self, image: Tensor, selection, i: int
                         ) -> Optional[PixelData]:
        """The (C, H, W) scores of image ``i`` (``image``: (1, 1 + Ku, H,
        W) as from :meth:`selected_inference`) as ``seg_logits``, within
        ``seg_logits.max_mb`` (:class:`SegLogitsStore`); only the stored
        pixels are filled to all C classes."""
        store = SegLogitsStore(self.num_classes, image.shape[-2:],
                               self.seg_logits_max_mb, device=image.device)
        if store.data is None:
            return None
        step = store.stride
        part = image[0, :, ::step, ::step]
        valid = selection.valid[i]
        store.data.copy_(part[:1].expand(self.num_classes, -1, -1))
        store.data[selection.index[i][valid]] = part[1:][valid]
        return store.result()
