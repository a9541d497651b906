# DCP-CLIP (Sec. III, Fig. 3) with OpenAI CLIP ViT-B/16: the CAT-Seg
# ViT-B/16 base (q/v fine-tuning of CLIP at 0.01 x lr, per-pixel BCE) with
# the cost volume over the 80 OpenAI templates (P = 80, Sec. IV-A; CAT-Seg's
# released configs use one) and DCP-CLIP's four parts switched on:
# - Dynamic Category Selection (Eqs. 1-5), theta 0.5 (Table VII), union of
#   the image-level and patch-level candidate sets, used in training and
#   at inference; ground-truth classes missed in training are added;
# - Text-guided alignment (Eqs. 6-12): cross-attention (CA) and
#   self-attention fusion (SA) branches, textual guidance = selected class
#   embeddings + learnable prompt + CLS logits (Tables IV, V);
# - Spatial Enhanced Decoder (Eqs. 13-16): 2 layers (Table VI(b)), Swin
#   spatial enhancement with q/k from [cost ; encoder ; attention]
#   (Table VI(a), (c)), U-Net-like transposed-conv upsampling 24->48->96;
# - Tag Validation (Eq. 17), inference only, for regions predicted as
#   classes unseen in COCO-Stuff training (a class is seen when one of its
#   names is a COCO-Stuff name; the name maps of data/name_maps/ are an
#   option of each evaluation config).
# docs/dcp_clip.md lists every reconstruction of the lost equations.
_base_ = ['./catseg_vit-b16.py']
model = dict(
    text_encoder=dict(templates='openai'),
    # CLIP self-attention weights of the guidance blocks (the decoder's
    # "attention weights", Eq. 13)
    attention_layers=(3, 7),
    decode_head=dict(
        type='DCPCLIPHead',
        # the CLS->patch attention maps of the two attention layers feed the
        # decoder (must equal len(attention_layers))
        num_attention_layers=2,
        # DCP-CLIP replaces CAT-Seg's aggregation: no spatial/class
        # aggregation layers and no aggregator guidance projections (the
        # alignment and the decoder do that work, Sec. III-C, III-D)
        aggregator=dict(_delete_=True, num_layers=0),
        appearance_guidance_channels=0,
        text_guidance_channels=0,
        category_selection=dict(
            type='DynamicCategorySelection',
            threshold=0.5,
            combine='union',
            suppression='complement',
            training_gt='force'),
        alignment=dict(
            type='TextGuidedAlignment',
            ca=True,
            sa=True,
            guidance=dict(text=True, prompt=True, cls_logits=True)),
        decoder=dict(
            _delete_=True,
            type='SpatialEnhancedDecoder',
            num_layers=2,
            swin=True,
            fuse_encoder=True,
            fuse_cost=True,
            fuse_attention=True),
        tag_validation=dict(
            type='TagValidation',
            top_k=5,
            # test vocabulary name -> COCO-Stuff 171 name; None: a class is
            # seen when its name is a COCO-Stuff training name
            name_map=None)))
