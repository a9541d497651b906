# DCP-CLIP Table III, row "+ DCS + TGA + SED (w/o TV)":
# A-847 / PC-459 / A-150 / PC-59 / PAS-20 = 12.1 / 19.6 / 32.2 / 57.9 / 95.7 mIoU.
# ViT-B/16, trained on COCO-Stuff 171 as ../vit-b16_coco-stuff171_80k.py
# with only this row's switches changed.
# Train: bash tools/dist_train.sh configs/dcpclip/ablations/table3_dcs_tga_sed.py 4
# Evaluate on each benchmark with its evaluation config and the same
# switches, e.g. ADE-150:
#   bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py \
#       work_dirs/dcpclip/ablations/table3_dcs_tga_sed/iter_80000.pth 4 \
#       --cfg-options model.decode_head.tag_validation=None
_base_ = ['../vit-b16_coco-stuff171_80k.py']
model = dict(
    decode_head=dict(
        tag_validation=None))
