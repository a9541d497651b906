# GEM with the official repository's post-processing, on PASCAL VOC 21
# (WalBouss/GEM gem/gem_wrapper.py): each class map min-max normalised over
# the image, argmax; one prompt per query, 'a photo of a {}.'
# (GEMWrapper.encode_text) instead of the 80 ImageNet templates.
_base_ = ['./gem_voc21.py']
model = dict(
    decode_head=dict(type='GEMHead', background_threshold=None),
    text_encoder=dict(templates='single'),
)
# The background is class 0's stuff words, scored like the other classes.
# The README's rule instead (softmax over the foreground maps, background
# below a threshold; 0.85 there cannot be reached with 20 classes):
# --cfg-options model.decode_head.background_threshold=0.1 (see
# docs/baselines.md).
