# DCP-CLIP Table VII, row "theta = 0.5 (the full model)":
# A-847 / A-150 / PAS-20 = 12.3 / 32.4 / 95.9 mIoU.
# Memory, training time, inference time: 13.2 GiB, 496.4 min, 0.20 s (4 x RTX 3090).
# ViT-B/16, trained on COCO-Stuff 171 as ../vit-b16_coco-stuff171_80k.py
# with only this row's switches changed.
# Train: bash tools/dist_train.sh configs/dcpclip/ablations/table7_theta_05.py 4
# Evaluate on each benchmark with its evaluation config and the same
# switches, e.g. ADE-150:
#   bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py \
#       work_dirs/dcpclip/ablations/table7_theta_05/iter_80000.pth 4
_base_ = ['../vit-b16_coco-stuff171_80k.py']
