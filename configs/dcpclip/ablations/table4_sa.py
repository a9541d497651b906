# DCP-CLIP Table IV, row "SA only":
# A-847 / PC-459 / A-150 / PC-59 / PAS-20 = 11.6 / 18.7 / 32.1 / 57.9 / 95.5 mIoU.
# ViT-B/16, trained on COCO-Stuff 171 as ../vit-b16_coco-stuff171_80k.py
# with only this row's switches changed.
# Train: bash tools/dist_train.sh configs/dcpclip/ablations/table4_sa.py 4
# Evaluate on each benchmark with its evaluation config and the same
# switches, e.g. ADE-150:
#   bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py \
#       work_dirs/dcpclip/ablations/table4_sa/iter_80000.pth 4 \
#       --cfg-options model.decode_head.alignment.ca=False
_base_ = ['../vit-b16_coco-stuff171_80k.py']
model = dict(
    decode_head=dict(
        alignment=dict(ca=False)))
