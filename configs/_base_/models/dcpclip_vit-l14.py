# DCP-CLIP with OpenAI CLIP ViT-L/14 at 336 px (Table I, second block):
# the DCP-CLIP ViT-B/16 base with the large towers, as CAT-Seg's
# configs/vitl_336.yaml (configs/_base_/models/catseg_vit-l14.py):
# guidance and attention from CLIP blocks 8 and 16 (0-based 7 and 15),
# 768-d guidance.
_base_ = ['./dcpclip_vit-b16.py']
model = dict(
    clip=dict(model_name='ViT-L-14-336'),
    guidance_layers=(7, 15),
    attention_layers=(7, 15),
    clip_resolution=(336, 336),
    decode_head=dict(
        in_channels=768,
        # encoder features per decoder level: level 0 the 768-d projected
        # dense CLIP patches, levels 1-2 the 1024-d ViT-L guidance layers
        decoder=dict(encoder_channels=(768, 1024, 1024))))
