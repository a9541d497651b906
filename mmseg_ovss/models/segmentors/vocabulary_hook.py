"""Give a training-free segmentor the vocabulary of the dataset it runs on.

``CLIPDenseSegmentor`` evaluates on any vocabulary: its config's class-name
file, or by default the classes of the dataset's metainfo, which this hook
passes to the model before validation and testing.
"""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class DatasetVocabularyHook(Hook):
    """Call ``model.set_dataset_classes(dataset.metainfo['classes'])``."""
    priority = 'HIGH'

    def _pass_classes(self, runner, loop) -> None:
        model = _unwrap(runner.model)
        if not hasattr(model, 'set_dataset_classes'):
            return
        dataset = loop.dataloader.dataset
        classes = dataset.metainfo.get('classes')
        if classes:
            model.set_dataset_classes(classes)

    def before_val(self, runner) -> None:
        self._pass_classes(runner, runner.val_loop)

    def before_test(self, runner) -> None:
        self._pass_classes(runner, runner.test_loop)
