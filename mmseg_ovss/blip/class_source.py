"""Which classes go into an image's caption.

- ``vocabulary`` (the paper): every class of the dataset vocabulary.
- ``json``: per-image class lists from a JSON file ``{image key: [class name
  or index, ...]}``; the key is the image file name without extension. The
  authors' later version captioned only the classes an external model
  (GPT-4o) listed for each image.
- ``oracle_ground_truth``: the classes present in the image's ground truth.
  For analysis only (an upper bound that reads the labels); never a
  zero-shot result.
"""
import json
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence

from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError
from mmseg_ovss.utils.paths import resolve_data_path

SOURCES = ('vocabulary', 'json', 'oracle_ground_truth')


def image_key(data_sample) -> str:
    """File name of the sample's image without folder and extension."""
    path = data_sample.metainfo.get('img_path')
    if not path:
        raise OVSSDataError(
            'a per-image class list needs `img_path` in the data sample; '
            'keep LoadImageFromFile in the test pipeline.')
    return osp.splitext(osp.basename(path))[0]


class ClassSource:
    """Maps a data sample to the sorted vocabulary indices to caption.

    Args:
        type: one of :data:`SOURCES`.
        path: the JSON file (``type='json'``).
        on_missing: for ``json``, what an image absent from the file gets:
            ``'error'`` or ``'vocabulary'`` (every class).
        ignore_index: ground-truth value that is no class (oracle mode).
    """

    def __init__(self, type: str = 'vocabulary', path: Optional[str] = None,
                 on_missing: str = 'error', ignore_index: int = 255):
        if type not in SOURCES:
            raise OVSSConfigError(
                f'unknown class source "{type}"; use one of {SOURCES}.')
        if on_missing not in ('error', 'vocabulary'):
            raise OVSSConfigError(
                'class_source.on_missing must be "error" or "vocabulary".')
        self.type = type
        self.on_missing = on_missing
        self.ignore_index = ignore_index
        self.table: Dict[str, list] = {}
        if type == 'json':
            if not path:
                raise OVSSConfigError(
                    'class_source type "json" needs `path` to a file '
                    '{image key: [class names or indices]}.')
            resolved = resolve_data_path(path, must_exist=False)
            if not osp.isfile(resolved):
                raise OVSSDataError(f'class list file "{path}" not found.')
            with open(resolved) as f:
                self.table = json.load(f)
            if not isinstance(self.table, dict):
                raise OVSSDataError(
                    f'{path} must hold a JSON object {{image key: [...]}}.')
        if type == 'oracle_ground_truth':
            warnings.warn('PnP-OVSS class source "oracle_ground_truth" reads '
                          'the ground-truth labels: analysis only, not a '
                          'zero-shot result.')

    def __call__(self, data_sample, synonyms: Sequence[Sequence[str]]
                 ) -> List[int]:
        num_classes = len(synonyms)
        if self.type == 'vocabulary':
            return list(range(num_classes))
        if self.type == 'oracle_ground_truth':
            if 'gt_sem_seg' not in data_sample:
                raise OVSSDataError(
                    'the oracle class source needs the ground truth; keep '
                    'LoadAnnotations in the test pipeline.')
            labels = data_sample.gt_sem_seg.data.unique()
            labels = labels[(labels != self.ignore_index)
                            & (labels < num_classes) & (labels >= 0)]
            return sorted(int(v) for v in labels.tolist())
        key = image_key(data_sample)
        if key not in self.table:
            if self.on_missing == 'vocabulary':
                return list(range(num_classes))
            raise OVSSDataError(
                f'image "{key}" has no entry in the class list file; add it '
                f'or set class_source.on_missing="vocabulary".')
        return self._to_indices(key, self.table[key], synonyms)

    @staticmethod
    def _to_indices(key: str, entries: list, synonyms) -> List[int]:
        lookup = {}
        for idx, names in enumerate(synonyms):
            for name in names:
                lookup.setdefault(name.strip().lower(), idx)
        out = set()
        for entry in entries:
            if isinstance(entry, int) and not isinstance(entry, bool):
                if not 0 <= entry < len(synonyms):
                    raise OVSSDataError(
                        f'image "{key}": class index {entry} is outside the '
                        f'vocabulary (0..{len(synonyms) - 1}).')
                out.add(entry)
            elif isinstance(entry, str) and entry.strip().lower() in lookup:
                out.add(lookup[entry.strip().lower()])
            else:
                raise OVSSDataError(
                    f'image "{key}": "{entry}" is not a class of the '
                    f'vocabulary.')
        return sorted(out)
