# CAT-Seg with OpenAI CLIP ViT-L/14 at 336 px (24x24 patch grid), as
# cvlab-kaist/CAT-Seg configs/vitl_336.yaml: the ViT-B/16 base with the
# large towers, guidance from CLIP blocks 8 and 16 (0-based 7 and 15),
# 768-d joint width and 1024-d ViT width. Training crops stay 384 px and
# are resized to 336 before CLIP (CAT-Seg's clip_resolution).
_base_ = ['./catseg_vit-b16.py']
model = dict(
    clip=dict(model_name='ViT-L-14-336'),
    guidance_layers=(7, 15),
    clip_resolution=(336, 336),
    decode_head=dict(
        in_channels=768,
        decoder=dict(guidance_in_channels=1024)))
