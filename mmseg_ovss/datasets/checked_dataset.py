"""Layout and input checks shared by the benchmark datasets.

``CheckedDatasetMixin`` goes in front of an mmseg dataset class. While the
dataset loads its file list (``full_init``) it checks the data root, the
image and annotation folders, the split file and the image/annotation pairs,
and it raises :class:`OVSSDataError` naming the problem, the expected layout
and the fix (the ``OVSS_DATA_ROOT`` variable or ``--cfg-options``). While a
sample goes through the pipeline, an image that cannot be read is reported by
name. It also hands ``num_classes``, ``ignore_index`` and
``applies_exif_orientation`` (whether the pipeline's ``LoadImageFromFile``
turns EXIF-rotated photos upright) to the annotation loader
(``LoadCheckedAnnotations``). With a class subset
(``metainfo=dict(classes=...)``) the dropped classes map to the dataset's
ignore index (mmseg writes 255, a class id once more than 255 classes are
kept).
"""
import os
import os.path as osp
from typing import Dict, Iterator, List, Optional, Sequence

from mmseg.datasets.transforms import LoadAnnotations as MMSegLoadAnnotations
from mmseg_ovss.datasets.label_io import describe_unreadable_image
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

DATA_ROOT_ENV = 'OVSS_DATA_ROOT'


class CheckedDatasetMixin:
    """Checks for a ``BaseSegDataset`` subclass (put it first in the bases).

    Class attributes a dataset sets:
        LAYOUT (str): the expected on-disk layout below ``data_root``.
        ROOT_NAME (str): the data root relative to ``$OVSS_DATA_ROOT``.
        PREPARE_HINT (str): how to produce derived annotations, if any.
    """
    LAYOUT: str = ''
    ROOT_NAME: str = ''
    PREPARE_HINT: str = ''

    # ---------------------------------------------------------------- init
    def get_label_map(self, new_classes: Optional[Sequence] = None
                      ) -> Optional[Dict[int, int]]:
        """mmseg's map from the full class list to ``new_classes``, with
        each dropped class sent to this dataset's ignore index.

        mmseg's ``BaseSegDataset.get_label_map`` marks a dropped class with
        255, which is a kept class's id when more than 255 classes are kept
        (PASCAL Context 459, ADE20K-847), and not the ignore index 65535 of
        those datasets."""
        label_map = super().get_label_map(new_classes)
        if label_map is None:
            return None
        kept = set(new_classes)
        old_classes = self.METAINFO['classes']
        return {old_id: new_id if old_classes[old_id] in kept
                else self.ignore_index
                for old_id, new_id in label_map.items()}

    def _update_palette(self) -> list:
        """The kept classes' colours, in their new order (mmseg skips the
        value 255 instead of the dropped classes)."""
        palette = self._metainfo.get('palette', [])
        classes = self._metainfo.get('classes', [])
        if self.label_map is None or len(palette) <= len(classes):
            return super()._update_palette()
        kept = sorted((new_id, old_id)
                      for old_id, new_id in self.label_map.items()
                      if new_id != self.ignore_index)
        return type(palette)(palette[old_id] for _, old_id in kept)

    def full_init(self) -> None:
        if not self._fully_initialized:
            self._check_pipeline()
        super().full_init()

    @property
    def applies_exif_orientation(self) -> bool:
        """Whether the pipeline's image loader applies EXIF orientation tags
        (mmcv's cv2 and Pillow backends do for ``color_type`` 'color' and
        'grayscale'; turbojpeg, tifffile and '*_ignore_orientation' do not).
        """
        for transform in self._pipeline_transforms():
            if type(transform).__name__ == 'LoadImageFromFile':
                return (getattr(transform, 'color_type', 'color') in (
                    'color', 'grayscale') and getattr(
                        transform, 'imdecode_backend', 'cv2') in (
                            'cv2', 'pillow'))
        return False

    def load_data_list(self) -> List[dict]:
        self._check_layout()
        data_list = super().load_data_list()
        if not data_list:
            self._fail(
                f'no image matching *{self.img_suffix} was found in '
                f'{self.data_prefix.get("img_path")}'
                + (f' for the ids of {self.ann_file}'
                   if self.ann_file else ''))
        if self.backend_args is None:
            self._check_pairs(data_list)
        return data_list

    def get_data_info(self, idx: int) -> dict:
        data_info = super().get_data_info(idx)
        data_info['num_classes'] = len(self._metainfo['classes'])
        data_info['ignore_index'] = self.ignore_index
        data_info['applies_exif_orientation'] = self.applies_exif_orientation
        return data_info

    # ------------------------------------------------------------- samples
    def prepare_data(self, idx):
        try:
            return super().prepare_data(idx)
        except OVSSDataError:
            raise
        except Exception as err:
            path = self.get_data_info(idx).get('img_path', '')
            problem = describe_unreadable_image(path) if path else None
            if problem is None:
                raise
            raise OVSSDataError(
                f'image {path} {problem}; replace the file (re-extract the '
                'dataset) or remove its id from the split file') from err

    # -------------------------------------------------------------- checks
    def _pipeline_transforms(self) -> Iterator:
        """Every transform of the pipeline, also those nested in wrappers
        (``TestTimeAug``'s branches, ``RandomChoice``, ``RandomApply``)."""
        return _nested_transforms(getattr(self.pipeline, 'transforms', ()))

    def _check_pipeline(self) -> None:
        """Refuse mmseg's LoadAnnotations (uint8 cast) for wide labels,
        wherever it sits in the pipeline."""
        num_classes = len(self._metainfo['classes'])
        if num_classes <= 255 and self.ignore_index <= 255:
            return
        for transform in self._pipeline_transforms():
            if isinstance(transform, MMSegLoadAnnotations):
                raise OVSSConfigError(
                    f'{type(self).__name__} has {num_classes} classes and '
                    f'ignore index {self.ignore_index}, but the pipeline uses '
                    "mmseg's LoadAnnotations, which casts labels to uint8 and "
                    "corrupts them; use dict(type='LoadCheckedAnnotations') "
                    'instead (also inside TestTimeAug in a tta_pipeline)')

    def _check_layout(self) -> None:
        if self.data_root is not None and not osp.isdir(self.data_root):
            env = os.environ.get(DATA_ROOT_ENV)
            where = (f'{DATA_ROOT_ENV}={env!r}' if env is not None else
                     f'{DATA_ROOT_ENV} is not set, so the default "data" '
                     f'relative to {os.getcwd()} was used')
            self._fail(
                f'data root {self.data_root} does not exist ({where}). Set '
                f'{DATA_ROOT_ENV} to the folder that holds {self.ROOT_NAME}/ '
                '(export OVSS_DATA_ROOT=/path/to/datasets) or pass '
                '--cfg-options test_dataloader.dataset.data_root=/path/to/'
                f'{self.ROOT_NAME}')
        img_dir = self.data_prefix.get('img_path')
        if img_dir and not osp.isdir(img_dir):
            self._fail(f'image folder {img_dir} does not exist')
        seg_dir = self.data_prefix.get('seg_map_path')
        if seg_dir and not osp.isdir(seg_dir):
            self._fail(f'annotation folder {seg_dir} does not exist'
                       + self._prepare_hint())
        if self.ann_file and not osp.isfile(self.ann_file):
            self._fail(f'split file {self.ann_file} does not exist')

    def _check_pairs(self, data_list: List[dict]) -> None:
        missing_images = [d['img_path'] for d in data_list
                          if not osp.isfile(d['img_path'])]
        if missing_images:
            self._fail(f'{len(missing_images)} listed image(s) are missing, '
                       f'e.g. {missing_images[0]}')
        missing_labels = [d['seg_map_path'] for d in data_list
                          if 'seg_map_path' in d
                          and not osp.isfile(d['seg_map_path'])]
        if missing_labels:
            self._fail(
                f'{len(missing_labels)} of {len(data_list)} image(s) have no '
                f'annotation *{self.seg_map_suffix}, e.g. {missing_labels[0]}'
                + self._prepare_hint())

    def _prepare_hint(self) -> str:
        return f'. {self.PREPARE_HINT}' if self.PREPARE_HINT else ''

    def _fail(self, problem: str) -> None:
        raise OVSSDataError(
            f'{type(self).__name__}: {problem}.\nExpected layout below '
            f'${DATA_ROOT_ENV} (see docs/datasets.md):\n{self.LAYOUT}')


def _nested_transforms(transforms) -> Iterator:
    """``transforms`` and, depth first, the transforms inside each wrapper:
    mmcv's ``Compose``, ``RandomChoice`` and ``RandomApply`` keep theirs in
    ``transforms``, ``TestTimeAug`` in ``subroutines``."""
    for transform in transforms:
        yield transform
        for attribute in ('transforms', 'subroutines'):
            inner = getattr(transform, attribute, None)
            if inner is None:
                continue
            if not isinstance(inner, (list, tuple)):
                inner = [inner]  # RandomApply holds one Compose
            yield from _nested_transforms(inner)
