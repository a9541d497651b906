# DCP-CLIP Table III, row "+ DCS + SED (w/o TGA)":
# A-847 / PC-459 / A-150 / PC-59 / PAS-20 = 11.3 / 18.6 / 31.5 / 57.1 / 94.5 mIoU.
# ViT-B/16, trained on COCO-Stuff 171 as ../vit-b16_coco-stuff171_80k.py
# with only this row's switches changed.
# Train: bash tools/dist_train.sh configs/dcpclip/ablations/table3_dcs_sed.py 4
# Evaluate on each benchmark with its evaluation config and the same
# switches, e.g. ADE-150:
#   bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py \
#       work_dirs/dcpclip/ablations/table3_dcs_sed/iter_80000.pth 4 \
#       --cfg-options model.decode_head.alignment=None model.decode_head.tag_validation=None
_base_ = ['../vit-b16_coco-stuff171_80k.py']
model = dict(
    decode_head=dict(
        alignment=None,
        tag_validation=None))
