# FreeCP + MaskCLIP on Cityscapes with the paper's window: "a sliding window
# approach with a size of 384 pixels and a stride of 112 pixels" (FreeCP Sec.
# 4.2, stated for every benchmark; short side 560 for Cityscapes). The
# authors' code runs Cityscapes with 224 windows (chenqi1126/FreeCP
# configs/cfg_city_scapes.py, slide_crop=224): ./maskclip_city_224.py, which is
# also the default ../maskclip_city.py.
_base_ = ['../maskclip_city.py']
model = dict(test_cfg=dict(crop_size=(384, 384), stride=(112, 112)))
