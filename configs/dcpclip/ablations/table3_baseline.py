# DCP-CLIP Table III, row "baseline (fine-tuned CLIP; no DCS, TGA, SED, TV)":
# A-847 / PC-459 / A-150 / PC-59 / PAS-20 = 7.1 / 14.4 / 23.1 / 52.6 / 93.7 mIoU.
# ViT-B/16, trained on COCO-Stuff 171 as ../vit-b16_coco-stuff171_80k.py
# with only this row's switches changed.
# Train: bash tools/dist_train.sh configs/dcpclip/ablations/table3_baseline.py 4
# Evaluate on each benchmark with its evaluation config and the same
# switches, e.g. ADE-150:
#   bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py \
#       work_dirs/dcpclip/ablations/table3_baseline/iter_80000.pth 4 \
#       --cfg-options model.decode_head.category_selection=None model.decode_head.alignment=None model.decode_head.decoder.swin=False model.decode_head.decoder.num_layers=0 model.decode_head.tag_validation=None
_base_ = ['../vit-b16_coco-stuff171_80k.py']
model = dict(
    decode_head=dict(
        category_selection=None,
        alignment=None,
        decoder=dict(swin=False, num_layers=0),
        tag_validation=None))
