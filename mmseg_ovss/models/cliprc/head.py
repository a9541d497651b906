"""The ZegCLIP / CLIP-RC decode head.

CLIP-RC (Zhang et al., CVPR 2024) Fig. 3: image features I, the global
feature G and region features R of :class:`CLIPRCSegmentor` go through

1. an optional input projection of I (ZegCLIP's ``use_proj``: Linear +
   LayerNorm; off in both authors' configs, ``input_proj=False``);
2. region alignment, Eq. 4 (:class:`RegionAlignment`; None turns it off:
   Table 5's rows without RAM, and ZegCLIP);
3. relationship descriptors, Eqs. 5-6 (:class:`RelationshipDescriptors`:
   M·C regional queries, or ZegCLIP's C queries without regions);
4. the relation decoder, Eqs. 7-8 (:class:`RelationDecoder`), giving
   (C, h, w) logit maps;
5. in training, the recovery decoder and loss, Eqs. 9-10
   (:class:`RecoveryDecoder`, :class:`FeatureRecoveryLoss`), and the NEL
   (``loss_decode``); Eq. 11 adds them with the losses' ``loss_weight``
   (alpha, beta: unpublished, 1 by default);
6. optional transductive self-training (:class:`UnseenPseudoLabeler`).

Logits are upsampled bilinearly to the label size for the loss and to the
input size for prediction, where they become sigmoid scores (the
segmentor's ``seen_score_offset`` then calibrates the seen classes).
"""
import copy
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.utils.errors import OVSSConfigError

from .decoder import init_linear_and_norm
from .segmentor import CLIPRCFeatures
from .self_training import UnseenPseudoLabeler

RECOVERY_TARGETS = ('backbone', 'head_input')


def _resize(logits: Tensor, size, align_corners: bool) -> Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode='bilinear',
                         align_corners=align_corners)


def input_size(batch_img_metas: List[dict]):
    """The size predictions are returned at, by mmseg's
    ``BaseDecodeHead.predict_by_feat`` rule."""
    meta = batch_img_metas[0]
    if isinstance(meta['img_shape'], torch.Size):
        return tuple(meta['img_shape'])
    if 'pad_shape' in meta:
        return tuple(meta['pad_shape'][:2])
    return tuple(meta['img_shape'][:2])


@MODELS.register_module()
class CLIPRCHead(BaseDecodeHead):
    """ZegCLIP's and CLIP-RC's head (see the module docstring).

    Args:
        in_channels (int): width of CLIP's projected features and text
            embeddings (512 for ViT-B/16).
        embed_dims (int): decoder width (512).
        input_proj (bool): ZegCLIP's Linear + LayerNorm on I before the
            decoder (off in the authors' configs).
        region_alignment (dict, optional): :class:`RegionAlignment` options
            ``use_cls``, ``use_rlb`` (Table 7), ``upsample``
            (``'bilinear'``, the authors' code, or ``'nearest'``); None: no
            RAM (ZegCLIP, Table 5 rows 1-2).
        decoder (dict): :class:`RelationDecoder` options (``num_layers`` 3,
            ``num_heads`` 8, ``bidirectional`` True, ``mask`` 'dot',
            ``joint_queries`` True, ...); ZegCLIP: ``bidirectional=False,
            mask='attention'``.
        recovery (dict, optional): ``num_layers`` (1; 0-3), ``loss``
            ('l1' | 'l2' | 'kd'), ``loss_weight`` (beta, 1.0),
            ``reduction`` ('mean' | 'sum'), ``temperature`` (KD, 1.0),
            ``image_target`` ('backbone': I as the backbone gives it, the
            paper; 'head_input': after ``input_proj``, JSeg's tensor),
            ``detach_targets`` (True: stop-gradient targets); None: no
            recovery (ZegCLIP, Table 5 rows 1-3).
        loss_decode (dict | list): the NEL, ``SigmoidFocalDiceLoss``
            (default) or ``PerClassBCELoss``; its ``loss_weight`` is alpha.
        self_training (bool | dict): transductive pseudo-labels
            (:class:`UnseenPseudoLabeler`: True, or dict(pixels=...,
            score_threshold=...)). Off, training labels that keep unseen
            ids (transductive) are refused: the loss would use the true
            unseen labels.
        num_classes (int): only for mmseg's base class; the classes come
            from the text embeddings of each stage.
        ignore_index, align_corners, init_cfg: as mmseg's heads.
    """

    uses_template_embeddings = False

    def __init__(self,
                 in_channels: int = 512,
                 embed_dims: int = 512,
                 input_proj: bool = False,
                 region_alignment: Optional[dict] = dict(
                     use_cls=True, use_rlb=True, upsample='bilinear'),
                 decoder: Optional[dict] = None,
                 recovery: Optional[dict] = None,
                 loss_decode: Union[dict, Sequence[dict]] = dict(
                     type='SigmoidFocalDiceLoss'),
                 self_training: Union[bool, dict] = False,
                 num_classes: int = 1,
                 ignore_index: int = 255,
                 align_corners: bool = False,
                 init_cfg=None,
                 **kwargs):
        kwargs.setdefault('threshold', 0.5)
        super().__init__(in_channels=in_channels, channels=embed_dims,
                         num_classes=num_classes, dropout_ratio=0.0,
                         loss_decode=loss_decode, ignore_index=ignore_index,
                         align_corners=align_corners, init_cfg=init_cfg,
                         **kwargs)
        del self.conv_seg
        self.embed_dims = embed_dims
        self.input_proj = None
        pixel_channels = in_channels
        if input_proj:
            self.input_proj = nn.Sequential(
                nn.Linear(in_channels, embed_dims), nn.LayerNorm(embed_dims))
            init_linear_and_norm(self.input_proj)
            pixel_channels = embed_dims
        self.region_alignment = None
        if region_alignment is not None:
            cfg = dict(region_alignment)
            cfg.setdefault('type', 'RegionAlignment')
            cfg.update(pixel_channels=pixel_channels,
                       token_channels=in_channels, out_channels=embed_dims)
            self.region_alignment = MODELS.build(cfg)
            init_linear_and_norm(self.region_alignment)
        elif pixel_channels != embed_dims:
            raise OVSSConfigError(
                f'CLIPRCHead: the decoder is {embed_dims}-d but the pixel '
                f'features are {pixel_channels}-d and nothing maps them; set '
                'input_proj=True, a region_alignment, or embed_dims='
                f'{pixel_channels}')
        self.descriptors = MODELS.build(dict(
            type='RelationshipDescriptors', text_channels=in_channels,
            out_channels=embed_dims))
        init_linear_and_norm(self.descriptors)
        decoder_cfg = dict(decoder or {})
        decoder_cfg.setdefault('type', 'RelationDecoder')
        decoder_cfg['embed_dims'] = embed_dims
        self.decoder = MODELS.build(decoder_cfg)
        self.recovery_decoder = self.recovery_loss = None
        self.recovery = None
        if recovery is not None:
            self._build_recovery(dict(recovery), pixel_channels)
        self.pseudo_labeler = UnseenPseudoLabeler.build(
            copy.deepcopy(self_training))

    def _build_recovery(self, cfg: dict, pixel_channels: int) -> None:
        if self.decoder.mask != 'dot':
            raise OVSSConfigError(
                "recovery needs the decoder's final queries: use decoder "
                "mask='dot' (CLIP-RC) with a recovery decoder, or "
                'recovery=None (ZegCLIP)')
        image_target = cfg.pop('image_target', 'backbone')
        if image_target not in RECOVERY_TARGETS:
            raise OVSSConfigError(
                f'recovery image_target={image_target!r}; use one of '
                f'{RECOVERY_TARGETS}')
        self.recovery = dict(image_target=image_target,
                             detach_targets=bool(
                                 cfg.pop('detach_targets', True)))
        loss = dict(type='FeatureRecoveryLoss', loss=cfg.pop('loss', 'l1'))
        for key in ('loss_weight', 'reduction', 'temperature'):
            if key in cfg:
                loss[key] = cfg.pop(key)
        cfg.setdefault('type', 'RecoveryDecoder')
        cfg.setdefault('num_heads', self.decoder.num_heads)
        target_dims = self.in_channels if image_target == 'backbone' \
            else pixel_channels
        cfg.update(embed_dims=self.embed_dims,
                   query_target_dims=2 * self.in_channels,
                   pixel_target_dims=target_dims)
        self.recovery_decoder = MODELS.build(cfg)
        self.recovery_loss = MODELS.build(loss)

    # ------------------------------------------------------------ forward
    def _decode(self, inputs, recover: bool = False) -> dict:
        feats = inputs.visual
        if not isinstance(feats, CLIPRCFeatures):
            raise OVSSConfigError(
                f'CLIPRCHead needs CLIPRCFeatures from CLIPRCSegmentor, got '
                f'{type(feats).__name__}; use model type CLIPRCSegmentor')
        batch, _, h, w = feats.patches.shape
        image = feats.patches.flatten(2).transpose(1, 2)        # I (B, N, D)
        pixels = image if self.input_proj is None else self.input_proj(image)
        head_input = pixels
        if self.region_alignment is not None:
            pixels = self.region_alignment(pixels, feats.cls, feats.regions,
                                           feats.region_grid, (h, w))
        text = inputs.text.embeddings.to(device=image.device,
                                         dtype=image.dtype)
        descriptors, queries = self.descriptors(text, feats.cls,
                                                feats.regions)
        out = self.decoder(queries, pixels)
        result = dict(logits=out.logits.reshape(batch, -1, h, w))
        if recover:
            source = image if self.recovery['image_target'] == 'backbone' \
                else head_input
            query_target, pixel_target = self.decoder.arrange(descriptors,
                                                              source)
            if self.recovery['detach_targets']:
                query_target = query_target.detach()
                pixel_target = pixel_target.detach()
            rec_q, rec_p = self.recovery_decoder(out.queries, out.pixels)
            result.update(recovered_queries=rec_q, recovered_pixels=rec_p,
                          query_target=query_target,
                          pixel_target=pixel_target)
        return result

    def forward(self, inputs) -> Tensor:
        """(B, C, h, w) logit maps on the patch grid."""
        return self._decode(inputs)['logits']

    # --------------------------------------------------------------- loss
    def _nel_modules(self):
        if isinstance(self.loss_decode, nn.ModuleList):
            return list(self.loss_decode)
        return [self.loss_decode]

    @staticmethod
    def _refuse_unseen_labels(labels: Tensor,
                              unseen_ids: Optional[Sequence[int]]) -> None:
        """Transductive labels (unseen ids kept, as
        ``ZeroShotLabels(setting='transductive')`` leaves them) reach a
        head without self-training: the loss would train on the true
        unseen labels, which the transductive setting does not know."""
        if not unseen_ids:
            return
        unseen = torch.as_tensor(tuple(unseen_ids), device=labels.device)
        if bool(torch.isin(labels, unseen).any()):
            raise OVSSConfigError(
                f'CLIPRCHead: the training labels contain unseen class ids '
                f'(unseen_ids={list(unseen_ids)}), i.e. transductive labels, '
                'but decode_head.self_training is off, so the loss would '
                'train on the true unseen labels; set '
                'decode_head.self_training=True (pseudo-labels for the '
                "unseen pixels), or train with ZeroShotLabels(setting="
                "'inductive') labels")

    def loss(self, inputs, batch_data_samples, train_cfg=None) -> dict:
        recover = self.recovery_decoder is not None
        out = self._decode(inputs, recover=recover)
        labels = self._stack_batch_gt(batch_data_samples).squeeze(1).long()
        logits = _resize(out['logits'].float(), labels.shape[-2:],
                         self.align_corners)
        if self.pseudo_labeler is not None:
            labels = self.pseudo_labeler(logits, labels,
                                         inputs.text.unseen_ids,
                                         self.ignore_index)
        else:
            self._refuse_unseen_labels(labels, inputs.text.unseen_ids)
        losses = {}
        for module in self._nel_modules():
            terms = module(logits, labels, ignore_index=self.ignore_index)
            for key, value in terms.items():
                losses[key] = losses[key] + value if key in losses else value
        if recover:
            losses['loss_recovery_query'] = self.recovery_loss(
                out['recovered_queries'], out['query_target'])
            losses['loss_recovery_image'] = self.recovery_loss(
                out['recovered_pixels'], out['pixel_target'])
        valid = labels != self.ignore_index
        correct = (logits.argmax(dim=1) == labels) & valid
        losses['acc_seg'] = 100.0 * correct.sum() / valid.sum().clamp(min=1)
        return losses

    # ------------------------------------------------------------ predict
    def predict(self, inputs, batch_img_metas: List[dict],
                test_cfg=None) -> Tensor:
        """(B, C, H, W) sigmoid scores at the input size."""
        logits = _resize(self.forward(inputs).float(),
                         input_size(batch_img_metas), self.align_corners)
        return logits.sigmoid()
