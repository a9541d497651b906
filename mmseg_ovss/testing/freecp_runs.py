"""tools/test.py runs of FreeCP-paper configs on planted tiny datasets.

:func:`shrink` makes a training-free config tiny (the tiny random CLIP, one
template, 48-pixel short side, 32/16 windows, no workers), as a user would
with ``--cfg-options``. :func:`run_config` plants the dataset
(:mod:`mmseg_ovss.testing.planted`) and runs the tool. With the
ground-truth vocabulary oracle (``model.gt_vocabulary=True``) the planted
labels come from the same model without the oracle, and
:func:`oracle_predictions` gives what the oracle must predict by an
independent route: the model's vocabulary set by hand to each image's
annotated classes.
"""
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np

from .planted import (IGNORE, PlantedDataset, benchmark_of,
                      pipeline_resize_scale, plant_ground_truth,
                      planted_data_root, predict_file)

MODEL = 'ovss-tiny-ViT-16'


def shrink(cfg, short_side: int = 48):
    """The config made tiny in place (and returned)."""
    model = cfg.model
    model.clip.update(model_name=MODEL, random_init=True)
    model.text_encoder.templates = 'single'
    if model.test_cfg.get('mode') == 'slide':
        model.test_cfg.update(crop_size=(32, 32), stride=(16, 16))
    if model.decode_head.type == 'FreeCPHead':
        model.decode_head.crop_size = 32
    strategy = model.backbone.dense_strategy
    if strategy.type == 'ProxyCLIP':
        # a tiny random DINO on the same 16-px grid as CLIP's attention
        strategy.update(random_init=True, vfm_model='vit_tiny_patch16_224')
    if model.get('pamr'):
        model.pamr.update(num_iter=2, dilations=(1, 2))
    for loader in ('test_dataloader', 'val_dataloader'):
        cfg[loader].update(num_workers=0, persistent_workers=False)
        for step in cfg[loader].dataset.pipeline:
            if step.type == 'Resize':
                step.scale = (2048, short_side)
    return cfg


def shrunk_config(config: Union[str, Path], tmp_path: Path) -> Path:
    """``config`` loaded, shrunk and dumped to ``tmp_path``."""
    from mmengine.config import Config
    cfg = shrink(Config.fromfile(str(config)))
    path = Path(tmp_path) / f'{Path(config).stem}.py'
    cfg.dump(str(path))
    return path


def run_config(config: Path, tmp_path: Path, corrupted: bool = True
               ) -> Tuple[dict, PlantedDataset, object]:
    """Plant a tiny dataset for the (shrunk) ``config`` and run
    ``tools/test.py CONFIG CHECKPOINT`` on it.

    The planted labels are the prediction of the config's model with
    ``gt_vocabulary`` off (the oracle cannot label an unlabelled image).
    Returns (metrics, planted data, the tool's config)."""
    from mmengine.config import Config

    from .tools import load_tool, run_tool
    tmp_path = Path(tmp_path)
    tool = load_tool('test')
    cfg = Config.fromfile(str(config))
    data_root = planted_data_root(benchmark_of(cfg), tmp_path / 'data')
    argv = [str(config), '--work-dir', str(tmp_path / 'work'),
            '--cfg-options', f'test_dataloader.dataset.data_root={data_root}']
    run_cfg = tool.build_cfg(tool.parse_args(argv))
    plant_cfg = run_cfg.copy()
    plant_cfg.model.gt_vocabulary = False
    planted = plant_ground_truth(plant_cfg, tmp_path / 'data',
                                 tmp_path / 'planted.pth',
                                 corrupted=corrupted)
    metrics = run_tool('test', [argv[0], planted.checkpoint, *argv[1:]])
    return metrics, planted, run_cfg


def oracle_predictions(run_cfg, planted: PlantedDataset) -> List[np.ndarray]:
    """What the oracle must predict for each planted image: the model of
    ``run_cfg`` (oracle off, the planted weights) with its vocabulary set
    to the lines of the classes in the image's planted labels (and the
    background class), its labels mapped back to the dataset's ids."""
    import torch
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmseg.registry import DATASETS, MODELS
    init_default_scope('mmseg')
    cfg = run_cfg.copy()
    cfg.model.gt_vocabulary = False
    model = MODELS.build(cfg.model).eval()
    load_checkpoint(model, planted.checkpoint, map_location='cpu',
                    strict=True)
    model.set_dataset_classes(DATASETS.get(
        cfg.test_dataloader.dataset.type).METAINFO['classes'])
    full = model.vocabulary()
    background = full.background_class
    out = []
    for truth, path in zip(planted.ground_truths, planted.image_paths):
        kept = set(np.unique(truth[truth != IGNORE]).tolist())
        if background is not None:
            kept.add(background)
        kept = sorted(kept)
        model.set_vocabulary(
            [list(full.synonyms[c]) for c in kept],
            background_class=None if background is None else
            kept.index(background))
        with torch.no_grad():
            labels = predict_file(model, Path(path),
                                  pipeline_resize_scale(cfg),
                                  cfg.model.data_preprocessor)
        lookup = np.array(kept)
        out.append(lookup[labels])
    return out
