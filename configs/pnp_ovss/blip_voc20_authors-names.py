# PnP-OVSS + BLIP Flickr on voc20 with the caption words of the authors' code
# (letitiabanana/PnP-OVSS; mmseg_ovss/blip/caption_names.py): e.g. VOC
# "table", ADE "billiardtable", COCO "trafficlight". The vocabulary
# (and every other use of the names) stays blip_voc20.py's.
_base_ = ['./blip_voc20.py']
model = dict(caption_names=dict(
    path='data/class_names/pnp_authors_caption_names.json', key='voc20'))
