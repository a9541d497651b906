# PnP-OVSS (Luo et al., CVPR 2024) over BLIP ITM large, Flickr weights.
# The paper's settings (Luo et al. §3-4, Table 2; authors' code
# letitiabanana/PnP-OVSS): caption "a picture of <all class names>",
# cross-attention of text layer 8 / head 10 (1-based, the authors' search
# result for every dataset), GradCAM with the raw ITM match logit, Salience
# DropOut (median schedule, 4 passes), per-class min-max, threshold 0.15
# (binary masks, as the paper), Gaussian blur sigma 0.05 x the longer side,
# DenseCRF (CutLER settings) and an "all classes off" background channel.
# The authors' later code: salience_dropout=dict(schedule='top_k'),
# threshold_mode='masked' (see docs/pnp_ovss.md).
# Weights: a HuggingFace id, an alias ('large-flickr', 'large-coco',
# 'base-flickr', 'base-coco') or a local folder (model.blip.pretrained).
data_preprocessor = dict(
    type='SegDataPreProcessor',
    # BLIP's image normalisation (the OpenAI CLIP statistics) x 255
    mean=[122.770938, 116.74601, 104.093735],
    std=[68.500534, 66.632244, 70.323165],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='PnPOVSS',
    data_preprocessor=data_preprocessor,
    blip=dict(pretrained='large-flickr', fix_config=True),
    class_names=None,
    class_source=dict(type='vocabulary'),
    caption_prefix='a picture of',
    max_caption_tokens=None,
    cross_attention_layer=8,
    cross_attention_head=10,
    use_gradcam=True,
    image_encoder_grad=False,
    salience_dropout=dict(schedule='median', iterations=4, top_k=10),
    # 'softmax' (with threshold=None): Table 5's attention-only row
    normalization='minmax',
    threshold=0.15,
    threshold_mode='binary',
    blur_sigma=0.05,
    crf=dict(iterations=10, gaussian_sxy=3, gaussian_compat=7,
             bilateral_sxy=50, bilateral_srgb=5, bilateral_compat=10),
    background=True,
    background_index=None,
    ignore_index=255,
    input_size=None)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
