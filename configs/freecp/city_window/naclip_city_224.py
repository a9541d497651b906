# FreeCP + NACLIP on Cityscapes with the authors' code's window: 224 / 112 at
# short side 560 (chenqi1126/FreeCP configs/cfg_city_scapes.py, slide_crop=224;
# the paper's text says 384: ./naclip_city_384.py). The same model as
# ../naclip_city.py, named by its window.
_base_ = ['../naclip_city.py']
model = dict(test_cfg=dict(crop_size=(224, 224), stride=(112, 112)))
