# GEM with the official repository's post-processing, on ADE20K-150
# (WalBouss/GEM gem/gem_wrapper.py): each class map min-max normalised over
# the image, argmax; one prompt per query, 'a photo of a {}.'
# (GEMWrapper.encode_text) instead of the 80 ImageNet templates.
_base_ = ['./gem_ade.py']
model = dict(
    decode_head=dict(type='GEMHead', background_threshold=None),
    text_encoder=dict(templates='single'),
)
