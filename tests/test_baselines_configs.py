"""Every baseline config builds and runs tools/test.py on its tiny dataset.

Each config runs as a user would run it, shrunk for speed through
``--cfg-options``: the tiny random open_clip model, one prompt template, a
32-pixel short side and 32/16 windows (the method's window mode is kept), no
data-loader workers.
"""
from pathlib import Path

import pytest
from mmengine.config import Config

from mmseg_ovss.testing.tools import run_tool

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / 'configs' / 'baselines').glob('*.py'))
METHODS = ('maskclip', 'sclip', 'clearclip', 'gem', 'naclip', 'proxyclip')
DATASETS = ('voc21', 'pc60', 'coco_object', 'voc20', 'cityscapes', 'pc59',
            'ade150', 'coco_stuff171')


def test_every_method_has_every_benchmark():
    names = {p.stem for p in CONFIGS}
    assert names == {f'{m}_{d}' for m in METHODS for d in DATASETS}


def shrink_options(cfg: Config) -> list:
    """--cfg-options that make a config tiny (a user's command line)."""
    opts = ['model.clip.model_name=ovss-tiny-ViT-16',
            'model.clip.random_init=True', 'model.text.templates=single']
    if cfg.model.strategy.type == 'ProxyCLIP':
        opts += ['model.strategy.vfm_checkpoint=None',
                 '+model.strategy.random_init=True',
                 'model.strategy.vfm_model=vit_tiny_patch16_224']
    if cfg.model.test_cfg.get('mode') == 'slide':
        opts += ['model.test_cfg.crop_size=(32,32)',
                 'model.test_cfg.stride=(16,16)']
    if cfg.model.get('pamr'):
        opts += ['model.pamr.num_iter=2', 'model.pamr.dilations=(1,2)']
    for loader in ('test_dataloader', 'val_dataloader'):
        opts += [f'{loader}.num_workers=0',
                 f'{loader}.persistent_workers=False']
        for index, step in enumerate(cfg[loader].dataset.pipeline):
            if step.type == 'Resize':
                opts.append(f'{loader}.dataset.pipeline.{index}.scale='
                            '(2048,32)')
    return opts


@pytest.mark.parametrize('config', CONFIGS, ids=lambda p: p.stem)
def test_config_runs_tools_test(config, tiny_data_root, tmp_path):
    cfg = Config.fromfile(str(config))
    assert cfg.model.text.class_names.endswith('.txt')
    metrics = run_tool('test', [config, '--work-dir', tmp_path / 'work',
                                '--cfg-options', *shrink_options(cfg)])
    assert 0.0 <= metrics['mIoU'] <= 100.0


def test_vocabulary_defaults_to_dataset_metainfo(tiny_data_root, tmp_path):
    """Without a class-name file the dataset's classes are the vocabulary."""
    config = REPO / 'configs' / 'baselines' / 'clearclip_voc20.py'
    cfg = Config.fromfile(str(config))
    metrics = run_tool('test', [
        config, '--work-dir', tmp_path, '--cfg-options',
        *shrink_options(cfg), 'model.text.class_names=None'])
    assert 0.0 <= metrics['mIoU'] <= 100.0
