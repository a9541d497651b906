"""Zero-shot seen/unseen splits and the labels of zero-shot training.

A split file (``data/splits/*.json``) divides the classes of one dataset
config into seen and unseen ones. The settings are those of ZegCLIP (Zhou
et al., CVPR 2023) and CLIP-RC (Zhang et al., CVPR 2024, sections 4.1 and 4.3:
datasets, inductive and transductive settings):

- inductive: the model trains on the seen classes only; unseen names are
  unknown and unseen pixels are ignored;
- transductive: unseen names are known; unseen pixels get pseudo-labels
  from the model (a model concern, the labels stay as they are);
- supervised: every class is labelled (the upper bound).

Every setting tests on all classes (``ZeroShotIoUMetric``).
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform

from mmseg.registry import TRANSFORMS
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError
from mmseg_ovss.utils.paths import resolve_data_path

ZERO_SHOT_SETTINGS = ('inductive', 'transductive', 'supervised')
SPLIT_FORMAT_HINT = 'see data/splits/voc_15_5.json for the format'
_REQUIRED_KEYS = ('num_classes', 'seen_ids', 'unseen_ids', 'seen_names',
                  'unseen_names')


@dataclass(frozen=True)
class ZeroShotSplit:
    """Seen and unseen classes of a dataset with ``num_classes`` classes.

    Ids index the dataset's ``metainfo['classes']``; ``seen_ids`` keeps the
    file's order, which is the order of the seen-only training labels.
    """
    name: str
    dataset: str
    num_classes: int
    seen_ids: Tuple[int, ...]
    unseen_ids: Tuple[int, ...]
    seen_names: Tuple[str, ...]
    unseen_names: Tuple[str, ...]
    path: str = ''

    @property
    def class_names(self) -> Tuple[str, ...]:
        """The name of every class, by id."""
        names = [''] * self.num_classes
        for ids, group in ((self.seen_ids, self.seen_names),
                           (self.unseen_ids, self.unseen_names)):
            for class_id, name in zip(ids, group):
                names[class_id] = name
        return tuple(names)

    def mismatch(self, classes: Sequence[str],
                 what: str = 'the dataset') -> Optional[str]:
        """Why ``classes`` (``what``'s) are not this split's, or None."""
        if len(classes) != self.num_classes:
            return (f'split {self.name} ({self.path}) is for '
                    f'{self.dataset or "a dataset"} ({self.num_classes} '
                    f'classes) but {what} has {len(classes)} classes')
        wrong = [(i, expected, str(found).strip())
                 for i, (expected, found) in enumerate(
                     zip(self.class_names, classes))
                 if expected != str(found).strip()]
        if wrong:
            shown = ', '.join(f'{i}: {e!r} in the split, {f!r} in {what}'
                              for i, e, f in wrong[:5])
            return (f'split {self.name} ({self.path}) names {len(wrong)} '
                    f'class(es) differently from {what} ({shown})')
        return None

    def check_classes(self, classes: Sequence[str],
                      what: str = 'the dataset') -> None:
        """Refuse ``classes`` whose count or names differ from the split's.

        Raises:
            OVSSConfigError: naming the split file, the first differences
                and the fix.
        """
        problem = self.mismatch(classes, what)
        if problem is not None:
            raise OVSSConfigError(
                f'{problem}; use the split file of this dataset or the '
                'dataset config the split is for')


def load_zero_shot_split(path: Union[str, Path]) -> ZeroShotSplit:
    """Read and check a ``data/splits/*.json`` zero-shot split.

    ``path`` resolves like the package's other data files (absolute, from
    the current directory, the repository root or the installed copy). The
    seen and unseen ids must cover ``0..num_classes-1`` exactly once, each
    with one name.

    Raises:
        OVSSDataError: the file is missing, not JSON, or not a valid split
            (the message names the file and the problem).
    """
    resolved = resolve_data_path(path)
    try:
        with open(resolved, encoding='utf-8') as f:
            content = json.load(f)
    except json.JSONDecodeError as error:
        raise OVSSDataError(
            f'split file {resolved} is not valid JSON ({error}); '
            f'{SPLIT_FORMAT_HINT}') from error
    if not isinstance(content, dict):
        raise OVSSDataError(f'split file {resolved} holds a JSON '
                            f'{type(content).__name__}, not an object; '
                            f'{SPLIT_FORMAT_HINT}')
    missing = [key for key in _REQUIRED_KEYS if key not in content]
    if missing:
        raise OVSSDataError(f'split file {resolved} has no {missing}; '
                            f'{SPLIT_FORMAT_HINT}')
    num_classes = content['num_classes']
    if not _is_int(num_classes) or num_classes < 2:
        raise OVSSDataError(
            f'split file {resolved}: num_classes must be an integer >= 2, '
            f'got {num_classes!r}')
    seen_ids = _read_ids(content, 'seen_ids', resolved)
    unseen_ids = _read_ids(content, 'unseen_ids', resolved)
    seen_names = _read_names(content, 'seen_names', len(seen_ids), resolved)
    unseen_names = _read_names(content, 'unseen_names', len(unseen_ids),
                               resolved)
    _check_partition(seen_ids + unseen_ids, num_classes, resolved)
    return ZeroShotSplit(
        name=str(content.get('name', resolved.stem)),
        dataset=str(content.get('dataset', '')),
        num_classes=num_classes,
        seen_ids=seen_ids,
        unseen_ids=unseen_ids,
        seen_names=seen_names,
        unseen_names=unseen_names,
        path=str(resolved))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_ids(content: dict, key: str, path: Path) -> Tuple[int, ...]:
    ids = content[key]
    if (not isinstance(ids, list) or not ids
            or not all(_is_int(i) for i in ids)):
        raise OVSSDataError(
            f'split file {path}: {key} must be a non-empty list of integer '
            f'class ids, got {ids!r}; {SPLIT_FORMAT_HINT}')
    return tuple(ids)


def _read_names(content: dict, key: str, count: int,
                path: Path) -> Tuple[str, ...]:
    names = content[key]
    if not isinstance(names, list) or not all(
            isinstance(n, str) for n in names):
        raise OVSSDataError(
            f'split file {path}: {key} must be a list of class names, got '
            f'{names!r}')
    ids_key = key.replace('_names', '_ids')
    if len(names) != count:
        raise OVSSDataError(
            f'split file {path}: {key} has {len(names)} names for '
            f'{count} {ids_key}; give one name per id, in the same order')
    return tuple(n.strip() for n in names)


def _check_partition(ids: Tuple[int, ...], num_classes: int,
                     path: Path) -> None:
    counts = np.bincount(
        np.clip(np.asarray(ids), 0, num_classes), minlength=num_classes + 1)
    outside = sorted({i for i in ids if not 0 <= i < num_classes})
    repeated = np.flatnonzero(counts[:num_classes] > 1).tolist()
    absent = np.flatnonzero(counts[:num_classes] == 0).tolist()
    problems = []
    if outside:
        problems.append(f'ids {outside} are outside 0..{num_classes - 1}')
    if repeated:
        problems.append(f'ids {repeated} occur more than once')
    if absent:
        problems.append(f'ids {absent} are neither seen nor unseen')
    if problems:
        raise OVSSDataError(
            f'split file {path}: seen_ids and unseen_ids must cover '
            f'0..{num_classes - 1} (num_classes={num_classes}) exactly once, '
            f'but {"; ".join(problems)}')


@TRANSFORMS.register_module()
class ZeroShotLabels(BaseTransform):
    """Labels of zero-shot training (ZegCLIP / CLIP-RC protocol).

    Put it in the train pipeline after the annotation loader and the
    augmentation, before ``PackSegInputs``. ``setting='inductive'`` turns
    unseen-class pixels into ``ignore_index`` and, with ``relabel=True``,
    renumbers the seen classes ``0..S-1`` in the split's order, so that the
    labels index the training vocabulary (the seen classes;
    ``DatasetVocabularyHook`` gives the model those names). With
    ``'transductive'`` and ``'supervised'`` the labels are kept (the
    vocabulary is every class; transductive pseudo-labels are made by the
    model). Every setting checks that each value is a class id of the split
    or ``ignore_index``.

    One table lookup per map (no per-pixel or per-class loop); uint8 maps
    stay uint8, wide maps (uint16/int32, > 255 classes) keep their dtype.

    Required keys: ``gt_seg_map`` (and every key in ``seg_fields``).
    Modified keys: the same.

    Args:
        split (str | ZeroShotSplit): a ``data/splits/*.json`` file.
        setting (str): 'inductive', 'transductive' or 'supervised'.
        ignore_index (int): the dataset's ignore index (kept, and given to
            unseen pixels in inductive training). Default 255.
        relabel (bool): renumber the seen classes 0..S-1 (inductive only).
            Default True.
    """

    def __init__(self,
                 split: Union[str, ZeroShotSplit],
                 setting: str = 'inductive',
                 ignore_index: int = 255,
                 relabel: bool = True) -> None:
        super().__init__()
        if setting not in ZERO_SHOT_SETTINGS:
            raise OVSSConfigError(
                f'ZeroShotLabels: setting={setting!r} is unknown; choose '
                f'one of {ZERO_SHOT_SETTINGS}')
        self.split = (split if isinstance(split, ZeroShotSplit) else
                      load_zero_shot_split(split))
        num_classes = self.split.num_classes
        if not _is_int(ignore_index) or ignore_index < num_classes:
            raise OVSSConfigError(
                f'ZeroShotLabels: ignore_index={ignore_index!r} must be a '
                'non-negative integer that is not a class id (0..'
                f'{num_classes - 1} in split {self.split.name}); '
                "use the dataset's ignore index (255, or 65535 for 16-bit "
                'labels)')
        self.setting = setting
        self.ignore_index = ignore_index
        self.relabel = bool(relabel)
        self._table = self._lookup_table()

    @property
    def relabels(self) -> bool:
        """Whether the labels are renumbered to the seen classes."""
        return self.setting == 'inductive' and self.relabel

    @property
    def training_class_ids(self) -> Tuple[int, ...]:
        """Dataset class ids of the training labels 0, 1, ...: the seen
        classes when relabelling, else every class."""
        if self.relabels:
            return self.split.seen_ids
        return tuple(range(self.split.num_classes))

    @property
    def training_split(self) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """(seen, unseen) ids in the training labels' numbering: no unseen
        class when relabelling (unseen names unknown) or supervised, the
        split's otherwise."""
        if self.relabels:
            return tuple(range(len(self.split.seen_ids))), ()
        if self.setting == 'supervised':
            return self.training_class_ids, ()
        return self.split.seen_ids, self.split.unseen_ids

    def training_classes(self, classes: Sequence[str]) -> list:
        """The training vocabulary out of a dataset's ``classes`` (checked
        against the split)."""
        self.split.check_classes(classes, 'the training dataset')
        return [classes[i] for i in self.training_class_ids]

    def _lookup_table(self) -> np.ndarray:
        """Output label of every input value 0..ignore_index (> every class
        id); -1 marks a value that is neither a class id nor the ignore
        index."""
        table = np.full(self.ignore_index + 1, -1, np.int32)
        table[self.ignore_index] = self.ignore_index
        if self.relabels:
            table[list(self.split.unseen_ids)] = self.ignore_index
            table[list(self.split.seen_ids)] = np.arange(
                len(self.split.seen_ids))
        else:
            table[:self.split.num_classes] = np.arange(self.split.num_classes)
            if self.setting == 'inductive':
                table[list(self.split.unseen_ids)] = self.ignore_index
        return table

    def transform(self, results: dict) -> dict:
        self._check_dataset(results)
        fields = results.get('seg_fields') or []
        if 'gt_seg_map' not in results or 'gt_seg_map' not in fields:
            raise OVSSConfigError(
                'ZeroShotLabels found no gt_seg_map; put it after '
                'LoadCheckedAnnotations (or LoadAnnotations) in the train '
                'pipeline')
        for key in fields:
            results[key] = self._map(results[key], results)
        return results

    def _check_dataset(self, results: dict) -> None:
        num_classes = results.get('num_classes')
        if num_classes is not None and num_classes != self.split.num_classes:
            raise OVSSConfigError(
                f'ZeroShotLabels: split {self.split.name} ({self.split.path})'
                f' is for {self.split.dataset} ({self.split.num_classes} '
                f'classes) but the dataset has {num_classes} classes; use '
                'the split file of this dataset')
        ignore_index = results.get('ignore_index')
        if ignore_index is not None and ignore_index != self.ignore_index:
            raise OVSSConfigError(
                f'ZeroShotLabels: ignore_index={self.ignore_index} differs '
                f"from the dataset's ignore index {ignore_index}; set "
                f'ignore_index={ignore_index}')

    def _map(self, label: np.ndarray, results: dict) -> np.ndarray:
        if label.dtype.kind not in 'ui':
            raise OVSSDataError(
                f'ZeroShotLabels: {results.get("seg_map_path", "the label")} '
                f'is a {label.dtype} array; label maps hold integer ids')
        if label.size == 0:
            return label
        if label.min() < 0 or label.max() >= len(self._table):
            self._refuse(label, results)
        mapped = self._table[label]
        if mapped.min() < 0:
            self._refuse(label, results)
        dtype = label.dtype
        if np.iinfo(dtype).max < self.ignore_index:
            dtype = np.uint16 if self.ignore_index <= 65535 else np.int64
        return mapped.astype(dtype, copy=False)

    def _refuse(self, label: np.ndarray, results: dict) -> None:
        values = np.unique(label)  # error path: one pass, per unique value
        outside = (values < 0) | (values >= len(self._table))
        bad = values[outside
                     | (self._table[np.where(outside, 0, values)] < 0)]
        shown = ', '.join(str(v) for v in bad[:5])
        raise OVSSDataError(
            f'ZeroShotLabels: {results.get("seg_map_path", "a label map")} '
            f'holds value(s) {shown} that are neither a class id of split '
            f'{self.split.name} (0..{self.split.num_classes - 1}, dataset '
            f'{self.split.dataset}) nor the ignore index {self.ignore_index};'
            ' use the split of this dataset, or put ZeroShotLabels after the '
            'annotation loader (which applies reduce_zero_label)')

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(split={self.split.name!r}, '
                f'setting={self.setting!r}, '
                f'ignore_index={self.ignore_index}, relabel={self.relabel})')
