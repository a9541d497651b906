# CAT-Seg (Cho et al., "CAT-Seg: Cost Aggregation for Open-Vocabulary
# Semantic Segmentation", CVPR 2024) with OpenAI CLIP ViT-B/16 at 384 px
# (24x24 patch grid), as cvlab-kaist/CAT-Seg configs/vitb_384.yaml:
# cost volume over the 80 templates -> conv embedding (hidden 128) ->
# 2 aggregation layers (Swin spatial aggregation, window 12, 4 heads, then
# linear class attention; appearance and text guidance projected to 128)
# -> upsampling decoder (dims 64, 32) guided by CLIP blocks 4 and 8
# (0-based 3 and 7, guidance dims 256, 128, projected to 32, 16);
# per-pixel binary cross-entropy over the classes. CLIP fine-tuned on the
# attention q/v projections of both towers (CLIP_FINETUNE 'attention'),
# at 0.01 x the learning rate (configs/_base_/schedules/catseg_80k.py).
# Images are normalised with CLIP's mean/std (CAT-Seg's
# MODEL.CLIP_PIXEL_MEAN/STD, RGB).
_base_ = ['../default_runtime.py']
crop_size = (384, 384)
model = dict(
    type='CostVolumeSegmentor',
    data_preprocessor=dict(
        type='OVSSSegDataPreProcessor',
        mean=[122.7709383, 116.7460125, 104.09373615],
        std=[68.5005327, 66.6321579, 70.3231630],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        # CAT-Seg's INPUT.SIZE_DIVISIBILITY 384: training crops are padded
        # to 384 x 384 (ignored label in the padding)
        size=crop_size),
    # the CLIP weights both towers load: a pretrained tag, a local file
    # (--cfg-options model.clip.checkpoint=...) or random weights
    clip=dict(
        model_name='ViT-B-16',
        pretrained='openai',
        checkpoint=None,
        random_init=False),
    backbone=dict(
        type='OpenCLIPViT',
        # q/v fine-tuning of the attention projections (CAT-Seg
        # CLIP_FINETUNE 'attention'); the rest of the tower is frozen
        freeze='attn_qv'),
    text_encoder=dict(
        type='OpenCLIPTextEncoder',
        # the 80 OpenAI ImageNet templates as cost-volume channels (P = 80,
        # DCP-CLIP Sec. IV-A); CAT-Seg's released configs use the single
        # template 'A photo of a {} in the scene':
        # --cfg-options "model.text_encoder.templates=['A photo of a {} in the scene']"
        templates='openai',
        freeze='attn_qv'),
    # CLIP intermediate blocks whose patch maps guide the decoder
    guidance_layers=(3, 7),
    # the resolution CLIP sees (CAT-Seg resizes every input to it)
    clip_resolution=(384, 384),
    decode_head=dict(
        type='CATSegHead',
        cost_embed=dict(hidden_dims=128, kernel_size=7),
        aggregator=dict(
            num_layers=2,
            num_heads=4,
            window_size=12,
            appearance_guidance_dims=512,
            appearance_guidance_proj_dims=128,
            text_guidance_dims=512,
            text_guidance_proj_dims=128,
            pooling_size=(2, 2)),
        decoder=dict(
            decoder_dims=(64, 32),
            guidance_dims=(256, 128),
            guidance_proj_dims=(32, 16)),
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True,
                         loss_weight=1.0)),
    # CAT-Seg's evaluation (eval.sh, TEST.SLIDING_WINDOW True): the image
    # resized to 640 x 640, 384 windows with overlap 1/3 (stride 256),
    # averaged with a global 384 view of the whole image
    test_cfg=dict(mode='slide', crop_size=(384, 384), stride=(256, 256)))

custom_hooks = [dict(type='DatasetVocabularyHook')]
