# DCP-CLIP Table VI(b), row "1 decoder layer":
# A-847 / PC-459 / A-150 / PC-59 / PAS-20 = 11.8 / 19.4 / 31.9 / 57.6 / 95.2 mIoU.
# ViT-B/16, trained on COCO-Stuff 171 as ../vit-b16_coco-stuff171_80k.py
# with only this row's switches changed.
# Train: bash tools/dist_train.sh configs/dcpclip/ablations/table6b_1_layer.py 4
# Evaluate on each benchmark with its evaluation config and the same
# switches, e.g. ADE-150:
#   bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py \
#       work_dirs/dcpclip/ablations/table6b_1_layer/iter_80000.pth 4 \
#       --cfg-options model.decode_head.decoder.num_layers=1
_base_ = ['../vit-b16_coco-stuff171_80k.py']
model = dict(
    decode_head=dict(
        decoder=dict(num_layers=1)))
