# CAT-Seg with OpenAI CLIP ViT-L/14 at 336 px (24x24 patch grid), as
# cvlab-kaist/CAT-Seg configs/vitl_336.yaml: the ViT-B/16 base with the
# large towers, guidance from CLIP blocks 8 and 16 (0-based 7 and 15) and
# 768-d appearance / text guidance (CLIP's projected width). Training
# crops stay 384 px and are resized to 336 before CLIP.
_base_ = ['./catseg_vit-b16.py']
model = dict(
    clip=dict(model_name='ViT-L-14-336'),
    guidance_layers=(7, 15),
    clip_resolution=(336, 336),
    decode_head=dict(
        aggregator=dict(
            appearance_guidance_dims=768,
            text_guidance_dims=768)))
