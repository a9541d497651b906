# CLIP-RC (Zhang et al., "Exploring Regional Clues in CLIP for Zero-Shot
# Semantic Segmentation", CVPR 2024), CLIP ViT-B/16 at 512 x 512.
# Authors' code: Jittor/JSeg (configs zero_voc12_20_512x512*.py,
# models clip_encoder_rlb.py); its base is ZegCLIP (ZiqinZhou66/ZegCLIP).
#
# - image tower: frozen CLIP ViT-B/16, position embeddings resized to the
#   32 x 32 grid of a 512 crop (pos_interp='size'), drop path 0.1, deep
#   visual prompts (VPT-deep: K tokens after CLS in every block through a
#   shared Linear + dropout 0.1); K is per dataset (10 VOC, 100 COCO /
#   Context) and set by each dataset config (prompt_tokens);
# - Region-Level Bridge (Sec. 3.2, Fig. 5): M = 16 frozen region tokens on a
#   4 x 4 grid (Table 6), not updated; patches see their region token;
# - head (Fig. 3): region alignment with CLS and RLB (Eq. 4, Table 7),
#   regional relationship descriptors (Eqs. 5-6), 3-layer bidirectional
#   relation decoder, 8 heads, 512-d (Eqs. 7-8), recovery decoder with 1
#   layer and L1 loss (Eqs. 9-10, Table 8), NEL = sigmoid focal x 100 +
#   dice x 1 (ZegCLIP's loss; Eq. 11 weights alpha = beta = 1, unpublished);
# - frozen text tower; templates per dataset (VOC 'zegclip_single', COCO /
#   Context 'vild' = ZegCLIP's 15 ViLD templates), set by each dataset
#   config;
# - inference: sigmoid scores, seen scores - 0.1 when the test split has
#   unseen classes (inductive calibration), slide 512 / stride 426.
# ImageNet mean / std normalisation, as JSeg / ZegCLIP (not CLIP's).
crop_size = (512, 512)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='CLIPRCSegmentor',
    clip=dict(model_name='ViT-B-16', pretrained='openai'),
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='OpenCLIPViT',
        pos_interp='size',
        drop_path_rate=0.1,
        freeze='all',
        prompts=dict(type='DeepVisualPrompts', num_tokens=10,
                     dropout=0.1)),
    text_encoder=dict(type='OpenCLIPTextEncoder', templates='zegclip_single',
                      freeze='all'),
    region_bridge=dict(
        type='RegionLevelBridge', num_tokens=16, update=False,
        patches_see_region=True),
    final_norm=True,
    final_norm_regions=False,
    decode_head=dict(
        type='CLIPRCHead',
        in_channels=512,
        embed_dims=512,
        input_proj=False,
        region_alignment=dict(use_cls=True, use_rlb=True,
                              upsample='bilinear'),
        decoder=dict(num_layers=3, num_heads=8, bidirectional=True,
                     mask='dot'),
        recovery=dict(num_layers=1, loss='l1', loss_weight=1.0),
        loss_decode=dict(type='SigmoidFocalDiceLoss'),
        self_training=False),
    # replaced by DatasetVocabularyHook at every stage
    class_names=None,
    seen_score_offset=0.1,
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
