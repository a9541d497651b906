"""The CAT-Seg and DCP-CLIP configs and the name maps of Tag Validation.

Every shipped config loads, passes the key check and builds at tiny size;
the training recipe is CAT-Seg's (learning rates per parameter group,
gradient clipping of the whole model, cosine schedule, batch 4 in total);
every ablation row's documented evaluation command reproduces its model;
the name maps are what their script makes and follow its rules.
"""
import argparse
import glob
import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config, DictAction

from mmseg_ovss.engine.launch import check_config_keys

REPO_ROOT = Path(__file__).resolve().parents[1]


def _rel(path) -> str:
    return str(Path(path).relative_to(REPO_ROOT))


SHIPPED = sorted(
    glob.glob(str(REPO_ROOT / 'configs/catseg/**/*.py'), recursive=True) +
    glob.glob(str(REPO_ROOT / 'configs/dcpclip/**/*.py'), recursive=True) +
    glob.glob(str(REPO_ROOT / 'configs/_base_/models/catseg_vit-*.py')) +
    glob.glob(str(REPO_ROOT / 'configs/_base_/models/dcpclip_vit-*.py')) +
    glob.glob(str(REPO_ROOT / 'configs/_base_/schedules/catseg_*.py')))
ABLATIONS = sorted(glob.glob(str(REPO_ROOT / 'configs/dcpclip/ablations/*.py')))
TRAIN_CONFIGS = [REPO_ROOT / f'configs/{m}/vit-{a}_coco-stuff171_80k.py'
                 for m in ('catseg', 'dcpclip') for a in ('b16', 'l14')]
BENCHMARKS = ('ade847', 'pc459', 'ade150', 'pc59', 'voc20')


def _load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


name_maps = _load_script(
    REPO_ROOT / 'tools/dataset_converters/make_name_maps.py', 'make_name_maps')


# ------------------------------------------------------------- all files
def test_the_configs_are_all_there():
    """Training, 5 evaluation configs per method and backbone, the ablation
    rows of Tables III-VII."""
    for method in ('catseg', 'dcpclip'):
        for arch in ('b16', 'l14'):
            assert (REPO_ROOT / f'configs/{method}/vit-{arch}_coco-stuff171_'
                    '80k.py').is_file()
            for bench in BENCHMARKS:
                assert (REPO_ROOT / f'configs/{method}/vit-{arch}_coco-'
                        f'stuff171_80k_{bench}.py').is_file()
    tables = {Path(p).name.split('_')[0] for p in ABLATIONS}
    assert tables == {'table3', 'table4', 'table5', 'table6a', 'table6b',
                      'table6c', 'table7'}
    assert len(ABLATIONS) == 6 + 4 + 3 + 2 + 3 + 4 + 5


@pytest.mark.parametrize('path', SHIPPED, ids=_rel)
def test_config_loads_and_passes_the_key_check(path):
    check_config_keys(Config.fromfile(path), path)


# ------------------------------------------------------------ the recipe
@pytest.mark.parametrize('path', TRAIN_CONFIGS, ids=_rel)
def test_training_recipe_is_catseg_s(path):
    """AdamW 2e-4 / wd 1e-4, CLIP x 0.01, clip 0.01, cosine to 0 over 80k
    iterations, batch 4 in total, COCO-Stuff 171 train at 384 px."""
    cfg = Config.fromfile(path)
    optim = cfg.optim_wrapper
    assert optim.optimizer.type == 'AdamW'
    assert optim.optimizer.lr == 2e-4
    assert optim.optimizer.weight_decay == 1e-4
    assert optim.clip_grad == dict(max_norm=0.01, norm_type=2)
    keys = optim.paramwise_cfg.custom_keys
    assert keys['backbone.visual'] == dict(lr_mult=0.01)
    assert keys['text_encoder'] == dict(lr_mult=0.01)
    [cosine] = cfg.param_scheduler
    assert cosine.type == 'CosineAnnealingLR' and cosine.eta_min == 0
    assert cosine.T_max == cosine.end == cfg.train_cfg.max_iters == 80000
    assert cfg.total_batch_size == 4
    assert cfg.train_dataloader.dataset.type == 'COCOStuff171Dataset'
    assert cfg.train_dataloader.dataset.data_prefix.img_path == \
        'images/train2017'
    crop = [t for t in cfg.train_dataloader.dataset.pipeline
            if t.type == 'RandomCrop']
    assert crop[0].crop_size == (384, 384)
    assert cfg.model.data_preprocessor.size == (384, 384)
    assert dict(type='DatasetVocabularyHook') in cfg.custom_hooks


@pytest.mark.parametrize('arch', ['b16', 'l14'])
def test_text_recipe_per_method(arch):
    """CAT-Seg: its released single template ('A photo of a {} in the
    scene', configs/vitb_384.yaml / vitl_336.yaml PROMPT_ENSEMBLE_TYPE
    'single'); DCP-CLIP: the 80 OpenAI templates (P = 80, Sec. IV-A). Both
    prompt a name's first synonym."""
    from mmseg_ovss.clip.templates import load_templates
    for method, count in (('catseg', 1), ('dcpclip', 80)):
        for bench in ('', ) + tuple(f'_{b}' for b in BENCHMARKS):
            cfg = Config.fromfile(REPO_ROOT / f'configs/{method}/vit-{arch}'
                                  f'_coco-stuff171_80k{bench}.py')
            templates = load_templates(cfg.model.text_encoder.templates)
            assert len(templates) == count, (method, bench)
            # the head takes the text encoder's count
            assert cfg.model.decode_head.num_templates is None
            assert cfg.model.class_name_synonyms == 'first'
            if method == 'catseg':
                assert templates[0]('cat') == 'A photo of a cat in the scene'
                # CAT-Seg's datasets/pc59.json names class 49 'diningtable'
                assert cfg.model.get('class_name_map') == (
                    dict(table='diningtable') if bench == '_pc59' else None)


def test_catseg_ade847_prompt_names_are_the_authors(tmp_path):
    """The ADE-847 names as CAT-Seg's get_text_embeds prompts them: the text
    before the first ', ' of each name of its datasets/ade847.json (which
    equals the package's ADE847_CLASSES)."""
    from mmengine.registry import init_default_scope

    from mmseg.registry import MODELS
    from mmseg_ovss.datasets.large_vocabularies import ADE847_CLASSES
    from mmseg_ovss.testing.cost_volume_configs import write_tiny_config
    import mmseg_ovss.testing.tiny_clip  # noqa: F401
    init_default_scope('mmseg')
    tiny = write_tiny_config(
        REPO_ROOT / 'configs/catseg/vit-b16_coco-stuff171_80k_ade847.py',
        tmp_path / 'tiny.py')
    model = MODELS.build(Config.fromfile(str(tiny)).model)
    model.set_dataset_classes(ADE847_CLASSES)
    with pytest.warns(UserWarning, match='can never win'):
        synonyms = model.vocabulary().synonyms
    authors = [name.split(', ')[0] for name in ADE847_CLASSES]
    assert [names for names in synonyms] == [(n, ) for n in authors]
    assert sum(',' in name for name in ADE847_CLASSES) == 217


def _optimizer_groups(cfg, model):
    from mmengine.optim import build_optim_wrapper
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    by_param = {}
    for group in wrapper.optimizer.param_groups:
        for param in group['params']:
            by_param[id(param)] = group
    return wrapper, {name: by_param[id(p)]
                     for name, p in model.named_parameters()
                     if p.requires_grad}


# --------------------------------------------------------- the ablations
def _documented_options(path: str) -> dict:
    """The ``--cfg-options`` of an ablation's evaluation command."""
    text = Path(path).read_text()
    match = re.search(r'--cfg-options (.+)', text)
    if not match:
        return {}
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(
        ['--cfg-options', *match.group(1).split()]).cfg_options


def _without_name_map(model: dict) -> dict:
    """The model config less what a benchmark sets: its Tag Validation
    name map and the prompt names of its classes (CAT-Seg's PC-59
    'diningtable')."""
    model = Config(dict(model=model)).to_dict()['model']
    model.pop('class_name_map', None)
    head = model['decode_head']
    if isinstance(head.get('tag_validation'), dict):
        head['tag_validation'].pop('name_map', None)
    return model


@pytest.mark.parametrize('path', ABLATIONS, ids=_rel)
def test_ablation_row_is_its_evaluation_command(path):
    """Training the row and evaluating it with the documented command build
    the same model (name map of the benchmark aside), and the row trains
    with the full model's data and schedule."""
    row = Config.fromfile(path)
    evaluation = Config.fromfile(
        REPO_ROOT / 'configs/dcpclip/vit-b16_coco-stuff171_80k_ade150.py')
    evaluation.merge_from_dict(_documented_options(path))
    assert _without_name_map(row.model) == _without_name_map(
        evaluation.model)
    full = Config.fromfile(
        REPO_ROOT / 'configs/dcpclip/vit-b16_coco-stuff171_80k.py')
    for key in ('train_dataloader', 'optim_wrapper', 'param_scheduler',
                'train_cfg', 'total_batch_size'):
        assert row.to_dict()[key] == full.to_dict()[key], key
    text = Path(path).read_text()
    assert re.search(r'= [\d.]+ / [\d.]+ / [\d.]+', text), \
        'the header gives the paper numbers of the row'


@pytest.mark.parametrize('theta', ['0.9', '0.8', '0.5', '0.2', '0'])
def test_table7_rows_set_theta(theta):
    cfg = Config.fromfile(REPO_ROOT / 'configs/dcpclip/ablations/table7_'
                          f'theta_{theta.replace(".", "")}.py')
    assert cfg.model.decode_head.category_selection.threshold == \
        float(theta)


# ----------------------------------------------------------- evaluation
@pytest.mark.parametrize('method', ['catseg', 'dcpclip'])
@pytest.mark.parametrize('arch', ['b16', 'l14'])
@pytest.mark.parametrize('bench', BENCHMARKS)
def test_evaluation_config(method, arch, bench):
    """The trained model on the benchmark's validation set, CAT-Seg's
    window + whole-image ensemble; DCP-CLIP validates tags with the benchmark's
    name map."""
    cfg = Config.fromfile(REPO_ROOT / f'configs/{method}/vit-{arch}_coco-'
                          f'stuff171_80k_{bench}.py')
    train = Config.fromfile(REPO_ROOT / f'configs/{method}/vit-{arch}_coco-'
                            'stuff171_80k.py')
    base = Config.fromfile(REPO_ROOT / f'configs/_base_/datasets/{bench}.py')
    assert cfg.test_dataloader.dataset.type == base.test_dataloader.dataset.type
    assert cfg.test_dataloader.dataset.data_prefix == \
        base.test_dataloader.dataset.data_prefix
    resize = [t for t in cfg.test_dataloader.dataset.pipeline
              if t.type == 'Resize']
    assert resize == [dict(type='Resize', scale=(2560, 640), keep_ratio=True)]
    assert cfg.model.test_cfg.mode == 'catseg_ensemble'
    assert cfg.train_dataloader is None
    model = _without_name_map(cfg.model)
    assert model == _without_name_map(train.model)
    if method == 'dcpclip':
        # exact COCO-Stuff names by default (the paper's Fig. 6); the name
        # map the header's command names exists
        assert cfg.model.decode_head.tag_validation.name_map is None
        option = re.search(r'tag_validation\.name_map=(\S+)',
                           Path(cfg.filename).read_text())
        assert option.group(1) == f'data/name_maps/{bench}.json'
        assert (REPO_ROOT / option.group(1)).is_file()


# ------------------------------------------------------------- name maps
def test_name_maps_are_what_the_script_makes():
    assert name_maps.main(['--check']) == 0


@pytest.mark.parametrize('bench', BENCHMARKS)
def test_name_map_keys_and_values(bench):
    """Keys: the benchmark's class names in label order; values: COCO-Stuff
    171 class names."""
    from mmseg.registry import DATASETS
    import mmseg_ovss  # noqa: F401
    mapping = json.loads((REPO_ROOT / f'data/name_maps/{bench}.json')
                         .read_text(encoding='utf-8'))
    classes = list(DATASETS.get(name_maps.BENCHMARKS[bench])
                   .METAINFO['classes'])
    coco = set(DATASETS.get('COCOStuff171Dataset').METAINFO['classes'])
    assert list(mapping) == [c for c in classes if c in mapping]
    assert set(mapping.values()) <= coco
    assert 0 < len(mapping) <= len(classes)


COCO_NAMES = ('person', 'airplane', 'motorcycle', 'couch', 'tv',
              'potted plant', 'dining table', 'traffic light', 'sky-other',
              'desk-stuff', 'window-blind', 'clouds', 'shelf', 'pavement',
              'leaves', 'stairs', 'skis', 'cloth', 'clothes', 'dog')


@pytest.mark.parametrize('test_name, expected', [
    ('person, individual, someone', 'person'),      # exact, first name
    ('sky', 'sky-other'),                          # COCO '-other'
    ('desk', 'desk-stuff'),                        # COCO '-stuff'
    ('aeroplane', 'airplane'),                     # synonym table
    ('sofa, couch, lounge', 'couch'),              # exact beats synonym
    ('tvmonitor', 'tv'),
    ('blind, screen', 'window-blind'),
    ('pottedplant', 'potted plant'),               # spacing
    ('trafficlight', 'traffic light'),
    ('cloud', 'clouds'),                           # number
    ('shelves', 'shelf'),
    ('leaf, leafage, foliage', 'leaves'),
    ('ski', 'skis'),
    ('cloth', 'cloth'),                            # not 'clothes'
    ('sidewalk, pavement', 'pavement'),
    ('bulletin board, notice board', None),        # unseen (paper Fig. 7)
    ('chest of drawers, chest, bureau, dresser', None),
    ('ship', None),                                # not boat
    ('armchair', None),                            # not chair
    ('andiron, firedog, dog, dog-iron', None),     # homonym
])
def test_name_matching_rules(test_name, expected):
    assert name_maps.match(test_name, COCO_NAMES) == expected


def test_voc20_is_all_seen_and_ade_keeps_the_paper_s_unseen_examples():
    voc = json.loads((REPO_ROOT / 'data/name_maps/voc20.json').read_text())
    assert len(voc) == 20 and voc['tvmonitor'] == 'tv'
    ade847 = json.loads((REPO_ROOT / 'data/name_maps/ade847.json')
                        .read_text())
    # Fig. 6 of the paper: TV corrects "water" to "river", "sidewalk" to
    # "path" -- path is unseen, sidewalk and river are COCO-Stuff classes
    assert ade847['river'] == 'river'
    assert ade847['sidewalk, pavement'] == 'pavement'
    assert not any(k.startswith('path') for k in ade847)


# ------------------------------------------------------- tiny builds
RUNNABLE = [p for p in SHIPPED
            if '/configs/catseg/' in p or '/configs/dcpclip/' in p]
RUNNABLE = [p for p in RUNNABLE if '/_base_/' not in p]


@pytest.mark.parametrize('path', RUNNABLE, ids=_rel)
def test_config_builds_at_tiny_size(path, tmp_path):
    """The shipped config with only sizes / weights overridden
    (``write_tiny_config``) passes the key check and builds its model, with
    the head type and DCP-CLIP parts of the shipped config."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg_ovss.testing.cost_volume_configs import write_tiny_config
    import mmseg_ovss.testing.tiny_clip  # noqa: F401
    init_default_scope('mmseg')
    shipped = Config.fromfile(path)
    tiny_path = write_tiny_config(path, tmp_path / 'tiny.py')
    cfg = Config.fromfile(str(tiny_path))
    check_config_keys(cfg, str(tiny_path))
    model = MODELS.build(cfg.model)
    head = shipped.model.decode_head
    assert type(model.decode_head).__name__ == head.type
    if head.type == 'DCPCLIPHead':
        for part in ('category_selection', 'alignment', 'tag_validation'):
            assert (getattr(model.decode_head, part, None) is None) == \
                (head.get(part) is None), part
