# Timing setting for ambiguity purification's crops (docs/freecp.md, speed):
# FreeCP-SCLIP at ADE size with every class kept by redundancy purification
# and a looser T_ap, so that random weights form ambiguity groups and crops
# (about 350 crops on one generated 448x597 image, seed 0). With pretrained
# weights the paper's thresholds (configs/freecp/sclip_ade.py) give the crops
# of a real image; compare against sclip_ade_base.py at equal windows.
_base_ = ['../sclip_ade.py']
model = dict(decode_head=dict(rp_threshold=-1.0, ap_threshold=0.8))
