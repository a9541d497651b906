# DCP-CLIP Table VI(c), row "feature fusion: none":
# A-847 / PC-459 / A-150 / PC-59 / PAS-20 = 11.6 / 19.1 / 31.3 / 56.8 / 94.7 mIoU.
# ViT-B/16, trained on COCO-Stuff 171 as ../vit-b16_coco-stuff171_80k.py
# with only this row's switches changed.
# Train: bash tools/dist_train.sh configs/dcpclip/ablations/table6c_no_fusion.py 4
# Evaluate on each benchmark with its evaluation config and the same
# switches, e.g. ADE-150:
#   bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py \
#       work_dirs/dcpclip/ablations/table6c_no_fusion/iter_80000.pth 4 \
#       --cfg-options model.decode_head.decoder.fuse_encoder=False model.decode_head.decoder.fuse_cost=False model.decode_head.decoder.fuse_attention=False
_base_ = ['../vit-b16_coco-stuff171_80k.py']
model = dict(
    decode_head=dict(
        decoder=dict(fuse_encoder=False, fuse_cost=False, fuse_attention=False)))
