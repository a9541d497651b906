# Training-free dense CLIP segmentor (SCLIP lineage: CLIP mean/std, slide
# inference and tau 40 of wangf3014/SCLIP clip_segmentor.py, the 80 OpenAI
# ImageNet templates of its prompts/imagenet_template.py): open_clip
# ViT-B/16 with OpenAI weights, a dense strategy for the last block(s), a
# cosine head over prompt-ensembled class queries, mmseg slide inference.
# A method file sets `backbone.dense_strategy`, `decode_head.logit_scale`
# and `test_cfg`;
# a benchmark file sets the test pipeline and the background rules.
_base_ = ['../default_runtime.py']

model = dict(
    type='CLIPDenseSegmentor',
    data_preprocessor=dict(
        type='OVSSSegDataPreProcessor',
        mean=[122.771, 116.746, 104.094],
        std=[68.501, 66.632, 70.323],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255),
    # the CLIP weights both towers load (mmseg's `pretrained=` for two
    # modules): a pretrained tag, a local file or random weights
    clip=dict(
        model_name='ViT-B-16',
        pretrained='openai',
        # local weights file, e.g. --cfg-options model.clip.checkpoint=...
        checkpoint=None,
        precision='fp32',
        random_init=False),
    backbone=dict(
        type='OpenCLIPViT',
        # position-embedding resize: 'size', 'size_antialias' (GEM) or
        # 'dino' (SCLIP lineage); set per method in clip_<method>.py
        pos_interp='size',
        dense_strategy=dict(type='Vanilla'),
        freeze='all'),
    text_encoder=dict(type='OpenCLIPTextEncoder', templates='openai',
                      freeze='all'),
    decode_head=dict(type='CosineSimilarityHead', logit_scale=40.0),
    # compute dtype of the dense path (backbone, strategy, crops) on a cast
    # copy of the weights: 'fp32' (exact), 'bf16', 'fp16' (GPU) or 'auto'
    # (docs/clip_backbone.md); clip.precision is the dtype weights load in
    precision='fp32',
    text=dict(
        # None: the dataset's metainfo classes (DatasetVocabularyHook)
        class_names=None,
        background_class='auto'),
    prob_thd=0.0,
    area_thd=None,
    # optional PAMR refinement: pamr=dict(num_iter=10, dilations=(8, 16))
    # (add it with --cfg-options +model.pamr=... where it is not set)
    window_batch_size=16,
    test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)))

custom_hooks = [dict(type='DatasetVocabularyHook')]
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
