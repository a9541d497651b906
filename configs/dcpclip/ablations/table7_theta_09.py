# DCP-CLIP Table VII, row "theta = 0.9":
# A-847 / A-150 / PAS-20 = 11.9 / 32.0 / 96.0 mIoU.
# Memory, training time, inference time: 12.1 GiB, 461.4 min, 0.19 s (4 x RTX 3090).
# ViT-B/16, trained on COCO-Stuff 171 as ../vit-b16_coco-stuff171_80k.py
# with only this row's switches changed.
# Train: bash tools/dist_train.sh configs/dcpclip/ablations/table7_theta_09.py 4
# Evaluate on each benchmark with its evaluation config and the same
# switches, e.g. ADE-150:
#   bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py \
#       work_dirs/dcpclip/ablations/table7_theta_09/iter_80000.pth 4 \
#       --cfg-options model.decode_head.category_selection.threshold=0.9
_base_ = ['../vit-b16_coco-stuff171_80k.py']
model = dict(
    decode_head=dict(
        category_selection=dict(threshold=0.9)))
