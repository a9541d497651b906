# DCP-CLIP Table VI(a), row "aggregation: spatial-enhance (the full model)":
# A-847 / PC-459 / A-150 / PC-59 / PAS-20 = 12.3 / 19.7 / 32.4 / 58.1 / 95.9 mIoU.
# ViT-B/16, trained on COCO-Stuff 171 as ../vit-b16_coco-stuff171_80k.py
# with only this row's switches changed.
# Train: bash tools/dist_train.sh configs/dcpclip/ablations/table6a_spatial_enhance.py 4
# Evaluate on each benchmark with its evaluation config and the same
# switches, e.g. ADE-150:
#   bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py \
#       work_dirs/dcpclip/ablations/table6a_spatial_enhance/iter_80000.pth 4
_base_ = ['../vit-b16_coco-stuff171_80k.py']
