# DCP-CLIP Table V, row "(II) w/o learnable prompt: selected class embeddings only":
# A-847 / PC-459 / A-150 / PC-59 / PAS-20 = 12.0 / 19.1 / 32.0 / 57.0 / 95.1 mIoU.
# ViT-B/16, trained on COCO-Stuff 171 as ../vit-b16_coco-stuff171_80k.py
# with only this row's switches changed.
# Train: bash tools/dist_train.sh configs/dcpclip/ablations/table5_no_cls_logits_no_prompt.py 4
# Evaluate on each benchmark with its evaluation config and the same
# switches, e.g. ADE-150:
#   bash tools/dist_test.sh configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py \
#       work_dirs/dcpclip/ablations/table5_no_cls_logits_no_prompt/iter_80000.pth 4 \
#       --cfg-options model.decode_head.alignment.guidance.cls_logits=False model.decode_head.alignment.guidance.prompt=False
_base_ = ['../vit-b16_coco-stuff171_80k.py']
model = dict(
    decode_head=dict(
        alignment=dict(guidance=dict(cls_logits=False, prompt=False))))
