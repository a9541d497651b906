# PnP-OVSS + BLIP Flickr on coco_object with the caption words of the authors' code
# (letitiabanana/PnP-OVSS; mmseg_ovss/blip/caption_names.py): e.g. VOC
# "table", ADE "billiardtable", COCO "trafficlight". The vocabulary
# (and every other use of the names) stays blip_object.py's.
_base_ = ['./blip_object.py']
model = dict(caption_names=dict(
    path='data/class_names/pnp_authors_caption_names.json', key='coco_object'))
