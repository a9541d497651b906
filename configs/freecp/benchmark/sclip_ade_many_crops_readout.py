# The crop timing setting (sclip_ade_many_crops.py) with Eq. 8's boxes read
# from the windows' own tokens (box_encoder='window_readout', a speed option
# that changes results; docs/freecp.md) instead of one CLIP forward per crop.
_base_ = ['./sclip_ade_many_crops.py']
model = dict(decode_head=dict(box_encoder='window_readout'))
