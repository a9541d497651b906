"""Which classes go into an image's caption.

- ``vocabulary`` (the paper): every class of the dataset vocabulary.
- ``json``: per-image class lists from a UTF-8 JSON file ``{image key:
  [class name or index, ...]}``; the key is the image file name without
  extension; names match any synonym, compared as in
  :func:`mmseg_ovss.clip.vocabulary.name_key` (case, spacing and Unicode
  normalisation ignored). The
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

from mmseg_ovss.clip.vocabulary import name_key, read_utf8_text
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
            self.table = self._read(resolved)
            if not isinstance(self.table, dict):
                raise OVSSDataError(
                    f'{path} must hold a JSON object {{image key: [...]}}.')
        if type == 'oracle_ground_truth':
            warnings.warn('PnP-OVSS class source "oracle_ground_truth" reads '
                          'the ground-truth labels: analysis only, not a '
                          'zero-shot result.')

    @staticmethod
    def _read(path) -> dict:
        """The class list file; a key listed twice is an error (JSON would
        keep only its last list)."""
        def no_repeated_keys(pairs):
            keys = [key for key, _ in pairs]
            repeated = sorted({k for k in keys if keys.count(k) > 1})
            if repeated:
                raise OVSSDataError(
                    f'class list file "{path}" lists "{repeated[0]}" twice; '
                    'merge its entries')
            return dict(pairs)

        text = read_utf8_text(path, 'class list file')
        try:
            return json.loads(text, object_pairs_hook=no_repeated_keys)
        except json.JSONDecodeError as err:
            raise OVSSDataError(
                f'class list file "{path}" is not valid JSON ({err}); fix it '
                '(an object {image key: [class names or indices]})') from err

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
                lookup.setdefault(name_key(name), idx)
        out = set()
        for entry in entries:
            if isinstance(entry, int) and not isinstance(entry, bool):
                if not 0 <= entry < len(synonyms):
                    raise OVSSDataError(
                        f'image "{key}": class index {entry} is outside the '
                        f'vocabulary (0..{len(synonyms) - 1}).')
                out.add(entry)
            elif isinstance(entry, str) and name_key(entry) in lookup:
                out.add(lookup[name_key(entry)])
            else:
                raise OVSSDataError(
                    f'image "{key}": "{entry}" is not a class of the '
                    f'vocabulary.')
        return sorted(out)
