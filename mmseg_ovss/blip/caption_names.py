"""Caption words per class, when they differ from the vocabulary's names.

The caption of PnP-OVSS is "a picture of" followed by the class names (§3).
The paper does not list the names; the authors' code
(letitiabanana/PnP-OVSS) writes its own spellings into the caption:

- VOC: the raw VOC names but "table" for "diningtable"
  (``load_voc`` in ``Load_datasets.py``);
- PASCAL Context 59: the mmseg names (``load_psc``);
- ADE20K: its own list of 150 names (``load_ade20k``: "billiard table",
  "trash can", "screen" for both "screen door" and "screen", ...), spaces
  removed (``"".join(i.split(" "))``: "chestofdrawers");
- COCO-Object / COCO-Stuff: the names of the COCO annotation files with
  spaces and hyphens removed (``PnP_OVSS_0514_updated_segmentation_coco.py``:
  "trafficlight", "diningtable", "wallbrick").

``data/class_names/pnp_authors_caption_names.json`` holds these lists, one
entry per class of the package's vocabulary files in the same order (the
background row of COCO-Object, never captioned, is "background"). They are
words for the caption only: two classes may share one (ADE's "screen"), and
the vocabulary files keep the dataset names for everything else.
"""
import json
from typing import List, Sequence, Union

from mmseg_ovss.clip.vocabulary import read_utf8_text
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError
from mmseg_ovss.utils.paths import resolve_data_path

AUTHORS_CAPTION_NAMES = 'data/class_names/pnp_authors_caption_names.json'


def read_caption_names(source: Union[dict, Sequence[str]]) -> List[str]:
    """One caption string per class from a list or ``dict(path=, key=)``."""
    if isinstance(source, dict):
        unknown = set(source) - {'path', 'key'}
        if unknown or 'key' not in source:
            raise OVSSConfigError(
                f'caption_names={source!r}: give dict(path=<json file>, '
                f"key=<list name>), e.g. dict(path='{AUTHORS_CAPTION_NAMES}'"
                ", key='ade150').")
        path = resolve_data_path(source.get('path', AUTHORS_CAPTION_NAMES))
        try:
            table = json.loads(read_utf8_text(path, 'caption-name file'))
        except json.JSONDecodeError as err:
            raise OVSSDataError(
                f'caption-name file {path} is not valid JSON ({err}).'
                ) from err
        key = source['key']
        names = table.get(key) if isinstance(table, dict) else None
        if not isinstance(names, list):
            lists = sorted(k for k, v in table.items()
                           if isinstance(v, list)) if isinstance(
                               table, dict) else []
            raise OVSSConfigError(
                f'caption-name file {path} has no list "{key}"; it has '
                f'{lists}.')
        source = names
    if isinstance(source, str) or not all(isinstance(n, str)
                                          for n in source):
        raise OVSSConfigError(
            'caption_names must be a list of strings (one per class) or '
            'dict(path=..., key=...).')
    names = [' '.join(n.split()) for n in source]
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise OVSSDataError(
            f'caption_names entry #{empty[0]} is empty; every class needs '
            'a caption word.')
    return names
