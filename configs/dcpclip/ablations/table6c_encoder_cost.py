# DCP-CLIP Table VI(c), row "+ shallow encoder features + initial cost map":
# A-847 / PC-459 / A-150 / PC-59 / PAS-20 = 12.0 / 19.5 / 32.1 / 57.8 / 95.7 mIoU.
# ViT-B/16, trained on COCO-Stuff 171 as ../vit-b16_coco-stuff171_80k.py
# with only this row's switches changed.
# Train: bash tools/dist_train.sh configs/dcpclip/ablations/table6c_encoder_cost.py 4
# Evaluate on each benchmark with its evaluation config and the same
# switches, e.g. ADE-150:
#   bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py \
#       work_dirs/dcpclip/ablations/table6c_encoder_cost/iter_80000.pth 4 \
#       --cfg-options model.decode_head.decoder.fuse_attention=False
_base_ = ['../vit-b16_coco-stuff171_80k.py']
model = dict(
    decode_head=dict(
        decoder=dict(fuse_attention=False)))
