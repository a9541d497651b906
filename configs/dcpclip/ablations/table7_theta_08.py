# DCP-CLIP Table VII, row "theta = 0.8":
# A-847 / A-150 / PAS-20 = 12.1 / 32.2 / 96.1 mIoU.
# Memory, training time, inference time: 12.6 GiB, 478.9 min, 0.19 s (4 x RTX 3090).
# ViT-B/16, trained on COCO-Stuff 171 as ../vit-b16_coco-stuff171_80k.py
# with only this row's switches changed.
# Train: bash tools/dist_train.sh configs/dcpclip/ablations/table7_theta_08.py 4
# Evaluate on each benchmark with its evaluation config and the same
# switches, e.g. ADE-150:
#   bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py \
#       work_dirs/dcpclip/ablations/table7_theta_08/iter_80000.pth 4 \
#       --cfg-options model.decode_head.category_selection.threshold=0.8
_base_ = ['../vit-b16_coco-stuff171_80k.py']
model = dict(
    decode_head=dict(
        category_selection=dict(threshold=0.8)))
