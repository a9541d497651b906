"""Give a segmentor the vocabulary of the stage it runs: train, val, test.

A model with ``set_dataset_classes(classes)`` (every CLIP segmentor) gets
the class names its labels and predictions index:

- before training: the training vocabulary, i.e. the train dataset's
  classes, reduced to the seen classes when its pipeline has
  ``ZeroShotLabels`` relabelling them (inductive zero-shot training);
- before validation: the val dataset's classes (all of them), and after it
  the training vocabulary again;
- before testing: the test dataset's classes.

A model that also has ``set_zero_shot_split(seen_ids, unseen_ids)`` (e.g.
CLIP-RC's inductive calibration of seen-class scores) gets, with each
vocabulary, the ids of its seen and unseen classes: for val/test those of
the loop's ``ZeroShotIoUMetric`` (or, failing that, of the training
split when it describes the evaluated dataset); for training those of the
training labels (``ZeroShotLabels.training_split``).

Training-free segmentors only evaluate: they get the val/test classes, as
before.
"""
from typing import List, Optional, Sequence, Tuple

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmseg.registry import HOOKS
from mmseg_ovss.datasets.zero_shot import ZeroShotLabels
from mmseg_ovss.evaluation.zero_shot_metric import ZeroShotIoUMetric
from mmseg_ovss.utils.errors import OVSSConfigError

Split = Tuple[Tuple[int, ...], Tuple[int, ...]]


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def leaf_datasets(dataset) -> list:
    """The datasets under mmengine's wrappers (``ConcatDataset``'s
    ``datasets``, ``RepeatDataset``/``ClassBalancedDataset``'s
    ``dataset``), the dataset itself when unwrapped."""
    if hasattr(dataset, 'datasets'):
        return [leaf for d in dataset.datasets for leaf in leaf_datasets(d)]
    if hasattr(dataset, 'dataset') and not hasattr(dataset, 'pipeline'):
        return leaf_datasets(dataset.dataset)
    return [dataset]


def find_zero_shot_labels(dataset) -> Optional[ZeroShotLabels]:
    """The ``ZeroShotLabels`` of the dataset's pipeline, or None.

    Raises:
        OVSSConfigError: more than one in a pipeline, or datasets of one
            wrapper whose transforms give different training vocabularies.
    """
    found = []
    for leaf in leaf_datasets(dataset):
        pipeline = getattr(leaf, 'pipeline', None)
        ours = [t for t in getattr(pipeline, 'transforms', ())
                if isinstance(t, ZeroShotLabels)]
        if len(ours) > 1:
            raise OVSSConfigError(
                f'the train pipeline has {len(ours)} ZeroShotLabels '
                f'transforms ({ours}); keep one')
        found.extend(ours)
    kinds = {(t.training_class_ids, t.training_split) for t in found}
    if len(kinds) > 1:
        raise OVSSConfigError(
            'the datasets of the training set label classes differently '
            f'({found}); give every part the same ZeroShotLabels')
    return found[0] if found else None


def _evaluation_split(loop, classes: Sequence[str],
                      training: Optional[ZeroShotLabels]) -> Optional[Split]:
    """Seen/unseen ids of an evaluated dataset with ``classes``."""
    evaluator = getattr(loop, 'evaluator', None)
    metrics = [m for m in getattr(evaluator, 'metrics', ())
               if isinstance(m, ZeroShotIoUMetric)]
    if metrics:
        metric = metrics[0]
        if metric.split is not None:
            metric.split.check_classes(classes, 'the evaluated dataset')
            return metric.split.seen_ids, metric.split.unseen_ids
        unseen = tuple(metric.unseen_ids)
        outside = [i for i in unseen if not 0 <= i < len(classes)]
        if outside:
            raise OVSSConfigError(
                f'ZeroShotIoUMetric: unseen ids {outside} do not exist in '
                f'the evaluated dataset of {len(classes)} classes; use the '
                'split of this dataset')
        unseen_set = set(unseen)
        seen = tuple(i for i in range(len(classes)) if i not in unseen_set)
        return seen, unseen
    if training is not None and training.split.mismatch(classes) is None:
        return training.split.seen_ids, training.split.unseen_ids
    return None


@HOOKS.register_module()
class DatasetVocabularyHook(Hook):
    """Call ``model.set_dataset_classes(classes)`` (and, where the model has
    it, ``model.set_zero_shot_split(seen_ids, unseen_ids)``) with the
    vocabulary of each stage; see the module docstring."""
    priority = 'HIGH'

    def __init__(self) -> None:
        self._training_labels: Optional[ZeroShotLabels] = None
        self._training: Optional[Tuple[List[str], Optional[Split]]] = None

    @staticmethod
    def _give(model, classes, split: Optional[Split]) -> None:
        if classes and hasattr(model, 'set_dataset_classes'):
            model.set_dataset_classes(list(classes))
        if split is not None and hasattr(model, 'set_zero_shot_split'):
            model.set_zero_shot_split(list(split[0]), list(split[1]))

    def before_train(self, runner) -> None:
        dataset = runner.train_loop.dataloader.dataset
        classes = list(dataset.metainfo.get('classes') or ())
        labels = find_zero_shot_labels(dataset)
        self._training_labels = labels
        if labels is None:
            self._training = (classes, None)
        else:
            self._training = (labels.training_classes(classes),
                              labels.training_split)
        self._give(_unwrap(runner.model), *self._training)

    def _evaluate(self, runner, loop) -> None:
        classes = list(loop.dataloader.dataset.metainfo.get('classes') or ())
        split = _evaluation_split(loop, classes, self._training_labels)
        self._give(_unwrap(runner.model), classes, split)

    def before_val(self, runner) -> None:
        self._evaluate(runner, runner.val_loop)

    def after_val(self, runner) -> None:
        if self._training is not None:
            self._give(_unwrap(runner.model), *self._training)

    def before_test(self, runner) -> None:
        self._evaluate(runner, runner.test_loop)
