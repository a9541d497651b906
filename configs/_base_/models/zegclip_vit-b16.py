# ZegCLIP (Zhou et al., "ZegCLIP: Towards Adapting CLIP for Zero-shot
# Semantic Segmentation", CVPR 2023; ZiqinZhou66/ZegCLIP) = CLIP-RC without
# its three components (CLIP-RC Table 5, row 1): no Region-Level Bridge, no
# region alignment, no recovery decoder; relationship descriptors
# [T * G ; T] (one query per class), and a one-way decoder (queries attend
# to the pixels, 3 layers, 8 heads, 512-d) whose attention logits give the
# masks (ZegCLIP's ATMSingleHeadSeg).
_base_ = ['./cliprc_vit-b16.py']
model = dict(
    region_bridge=None,
    decode_head=dict(
        region_alignment=None,
        recovery=None,
        decoder=dict(_delete_=True, num_layers=3, num_heads=8,
                     bidirectional=False, mask='attention')))
