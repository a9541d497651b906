# CAT-Seg (Cho et al., "CAT-Seg: Cost Aggregation for Open-Vocabulary
# Semantic Segmentation", CVPR 2024) with OpenAI CLIP ViT-B/16 at 384 px
# (24x24 patch grid), as cvlab-kaist/CAT-Seg configs/vitb_384.yaml:
# cost volume over the template 'A photo of a {} in the scene' (the
# released configs' PROMPT_ENSEMBLE_TYPE 'single') -> conv embedding
# (hidden 128) ->
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
        # CAT-Seg's released recipe (configs/vitb_384.yaml, vitl_336.yaml:
        # PROMPT_ENSEMBLE_TYPE 'single'; cat_seg_predictor.py): one
        # template, encoded with gradients through the q/v-tuned tower for
        # every class at every step. The 80 OpenAI templates of CAT-Seg's
        # default config.yaml (DCP-CLIP's P = 80):
        # --cfg-options model.text_encoder.templates=openai
        templates=['A photo of a {} in the scene'],
        freeze='attn_qv'),
    # a class name listing synonyms ('building, edifice' in ADE-847) is
    # prompted with its first one, as cat_seg_predictor.py get_text_embeds
    class_name_synonyms='first',
    # CLIP blocks whose patch tokens guide the upsampling decoder (0-based;
    # CAT-Seg's layer_indexes [3, 7])
    guidance_layers=(3, 7),
    # every input is resized to the resolution CLIP sees (24x24 patches)
    clip_resolution=(384, 384),
    decode_head=dict(
        type='CATSegHead',
        in_channels=512,            # CLIP's joint width D
        channels=128,               # HIDDEN_DIMS
        # P, the text encoder's template count (None: taken from it)
        num_templates=None,
        appearance_guidance_channels=128,   # APPEARANCE_GUIDANCE_PROJ_DIM
        text_guidance_channels=128,         # TEXT_GUIDANCE_PROJ_DIM
        cost_embed=dict(kernel_size=7),
        aggregator=dict(
            num_layers=2,                   # NUM_LAYERS
            spatial=dict(num_heads=4, window_size=12, mlp_ratio=4),
            # POOLING_SIZES [2, 2] in training, [1, 1] in eval.sh
            classwise=dict(num_heads=4, attention='linear',
                           pool_size=(2, 2), test_pool_size=(1, 1))),
        decoder=dict(
            guidance_in_channels=768,       # ViT-B/16 width
            channels=(64, 32),              # DECODER_DIMS
            guidance_channels=(256, 128),   # DECODER_GUIDANCE_DIMS
            guidance_proj_channels=(32, 16)),   # ..._PROJ_DIMS
        pad_len=256,
        loss_decode=dict(type='PixelBCELoss')),
    # CAT-Seg's evaluation (eval.sh, TEST.SLIDING_WINDOW True): the image
    # resized to 640 x 640, 384 windows with overlap 1/3 (a 2x2 grid) and
    # the whole image at 384, window scores averaged with the whole-image
    # scores ('catseg_ensemble', CostVolumeSegmentor)
    test_cfg=dict(mode='catseg_ensemble'))

custom_hooks = [dict(type='DatasetVocabularyHook')]
