"""Trainable mmseg models that record the vocabulary they are given (tests).

``DatasetVocabularyHook`` hands a model the class names (and zero-shot
split) of each stage. These are mmseg's ``EncoderDecoder`` (e.g. the tiny
SegFormer of ``tiny_configs``) plus the hook's interface; every ``loss`` and
``predict`` call logs the vocabulary in effect, so a test can check what
the model saw in training, validation and testing.
"""
from typing import List, Optional, Sequence, Tuple

from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS


@MODELS.register_module()
class ClassesRecordingEncoderDecoder(EncoderDecoder):
    """An ``EncoderDecoder`` with ``set_dataset_classes``, like the
    training-free segmentors.

    Attributes:
        dataset_classes (tuple | None): the last classes given.
        vocabulary_log (list): one ``(call, classes, split)`` entry per
            ``loss`` / ``predict`` call, ``call`` being 'loss' or 'predict'.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dataset_classes: Optional[Tuple[str, ...]] = None
        self.vocabulary_log: List[tuple] = []

    def set_dataset_classes(self, classes: Sequence[str]) -> None:
        self.dataset_classes = tuple(classes)

    def _split(self):
        return None

    def _record(self, call: str) -> None:
        self.vocabulary_log.append((call, self.dataset_classes,
                                    self._split()))

    def loss(self, inputs, data_samples):
        self._record('loss')
        return super().loss(inputs, data_samples)

    def predict(self, inputs, data_samples=None):
        self._record('predict')
        return super().predict(inputs, data_samples)


@MODELS.register_module()
class ZeroShotRecordingEncoderDecoder(ClassesRecordingEncoderDecoder):
    """Also takes the zero-shot split (``set_zero_shot_split``), as a
    trainable zero-shot model (CLIP-RC) does for its calibration."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.zero_shot_split: Optional[Tuple[tuple, tuple]] = None

    def set_zero_shot_split(self, seen_ids: Sequence[int],
                            unseen_ids: Sequence[int]) -> None:
        self.zero_shot_split = (tuple(seen_ids), tuple(unseen_ids))

    def _split(self):
        return self.zero_shot_split
