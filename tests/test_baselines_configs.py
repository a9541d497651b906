"""Every baseline config builds and runs tools/test.py on its tiny dataset.

Each config runs as a user would run it, shrunk for speed through
``--cfg-options``: the tiny random open_clip model, one prompt template, a
32-pixel short side and 32/16 windows (the method's window mode is kept), no
data-loader workers. The dataset is planted (``mmseg_ovss.testing.planted``):
its ground truth is the model's own prediction, obtained by a direct route,
with a known corruption in the second image, so the tool must report the
metric values counted by hand.
"""
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config

from mmseg_ovss.testing.planted import assert_reported
from mmseg_ovss.testing.planted import run_planted as planted_run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / 'configs' / 'baselines').glob('*.py'))
METHODS = ('maskclip', 'sclip', 'clearclip', 'gem', 'naclip', 'proxyclip')
# benchmark short names, as in the config file names
DATASETS = ('voc21', 'pc60', 'object', 'voc20', 'city', 'pc59', 'ade',
            'stuff')


# GEM as the ClearCLIP repository runs it (all its benchmarks) and with the
# official GEM repository's scoring (the GEM paper's VOC, Context, ADE)
GEM_VARIANTS = {f'gem_clearclip_{d}' for d in DATASETS} | {
    f'gem_official_{d}' for d in ('voc21', 'pc59', 'ade')}


def test_every_method_has_every_benchmark():
    names = {p.stem for p in CONFIGS}
    assert names == {f'{m}_{d}' for m in METHODS
                     for d in DATASETS} | GEM_VARIANTS


def load(name: str) -> Config:
    return Config.fromfile(str(REPO / 'configs' / 'baselines' / f'{name}.py'))


def short_side(cfg: Config) -> int:
    steps = [s for s in cfg.test_dataloader.dataset.pipeline
             if s.type == 'Resize']
    return steps[0].scale[1]


@pytest.mark.parametrize('config', CONFIGS, ids=lambda p: p.stem)
def test_class_name_file_matches_dataset_classes(config):
    """Every class-name file (reference spellings included) has one line
    per dataset class."""
    import mmseg_ovss  # noqa: F401 (registers the datasets)
    from mmseg.registry import DATASETS
    from mmseg_ovss.clip.vocabulary import Vocabulary
    cfg = Config.fromfile(str(config))
    classes = DATASETS.get(cfg.test_dataloader.dataset.type).METAINFO[
        'classes']
    path = REPO / cfg.model.text.class_names
    lines = path.read_text().splitlines()
    assert len(lines) == len(classes) and all(line.strip()
                                               for line in lines)
    shared = cfg.model.text.get('shared_synonyms', 'error')
    assert Vocabulary.from_file(str(path), shared_synonyms=shared
                                ).num_classes == len(classes)


@pytest.mark.parametrize('dataset,short', [('ade150', 'ade'),
                                           ('coco_stuff171', 'stuff')])
def test_reference_spellings_join_words_in_dataset_order(dataset, short):
    """The reference-repo files differ from ours only by joined words."""
    ours = (REPO / 'data' / 'class_names' / f'{dataset}.txt').read_text()
    ref = (REPO / 'data' / 'class_names' / 'reference' /
           f'{dataset}.txt').read_text()
    ours, ref = ours.splitlines(), ref.splitlines()
    assert [n.replace(' ', '') for n in ours] == ref
    assert 'chestofdrawers' in ref or 'diningtable' in ref
    for method in METHODS:
        assert load(f'{method}_{short}').model.text.class_names == \
            f'data/class_names/reference/{dataset}.txt'


def test_clearclip_and_proxyclip_vocabularies():
    """Their repos: plain person / tvmonitor; ClearCLIP's background is the
    word "background"; ProxyCLIP's is SCLIP's 26 stuff words on VOC21 and
    17 of them on Object."""
    from mmseg_ovss.clip.vocabulary import Vocabulary
    for method in ('clearclip', 'proxyclip'):
        for dataset, base in (('voc21', 'voc21'), ('voc20', 'voc20'),
                              ('object', 'coco_object')):
            path = load(f'{method}_{dataset}').model.text.class_names
            assert path == (f'data/class_names/reference/{method}_'
                            f'{base}.txt')
            vocab = Vocabulary.from_file(
                str(REPO / path), shared_synonyms=load(
                    f'{method}_{dataset}').model.text.get('shared_synonyms',
                                                          'error'))
            names = [s[0] for s in vocab.synonyms]
            assert 'person' in names and all(
                len(s) == 1 for s in vocab.synonyms[1:])
            if dataset != 'object':
                assert names[-1] == 'tvmonitor'
    clear = Vocabulary.from_file(
        str(REPO / 'data/class_names/reference/clearclip_coco_object.txt'))
    assert clear.synonyms[0] == ('background', )
    # "bed" is a background word and class 60 (shared_synonyms='allow')
    with pytest.warns(UserWarning, match="line 61 .'bed'. can never win"):
        proxy = Vocabulary.from_file(
            str(REPO / 'data/class_names/reference/proxyclip_coco_object.txt'),
            shared_synonyms='allow')
    # SCLIP's 26 minus lamp, door, window, wardrobe, ceiling, shelf,
    # curtain, stair, fence (desk and bed stay)
    assert len(proxy.synonyms[0]) == 17
    assert not {'lamp', 'door', 'window', 'wardrobe', 'ceiling', 'shelf',
                'curtain', 'stair', 'fence'} & set(proxy.synonyms[0])
    proxy = Vocabulary.from_file(
        str(REPO / 'data/class_names/reference/proxyclip_voc21.txt'))
    assert len(proxy.synonyms[0]) == 26


@pytest.mark.parametrize('method,crop,stride', [
    ('clearclip', 224, 224), ('maskclip', 224, 224), ('gem', 224, 224),
    ('proxyclip', 224, 112)])
def test_cityscapes_resolution(method, crop, stride):
    cfg = load(f'{method}_city')
    assert short_side(cfg) == 448
    assert cfg.model.test_cfg.mode == 'slide'
    assert tuple(cfg.model.test_cfg.crop_size) == (crop, crop)
    assert tuple(cfg.model.test_cfg.stride) == (stride, stride)


@pytest.mark.parametrize('method,mode', [
    ('maskclip', 'dino'), ('sclip', 'dino'), ('clearclip', 'dino'),
    ('naclip', 'dino'), ('proxyclip', 'dino'), ('gem', 'size_antialias')])
def test_position_embedding_mode_per_method(method, mode):
    model = load(f'{method}_voc21').model
    assert model.backbone.pos_interp == mode
    assert 'pos_interp' not in model.clip  # the old place of the key


def shrink_options(cfg: Config) -> list:
    """--cfg-options that make a config tiny (a user's command line)."""
    opts = ['model.clip.model_name=ovss-tiny-ViT-16',
            'model.clip.random_init=True',
            'model.text_encoder.templates=single']
    if cfg.model.backbone.dense_strategy.type == 'ProxyCLIP':
        # random_init alone overrides the configured DINO checkpoint
        opts += ['+model.backbone.dense_strategy.random_init=True',
                 'model.backbone.dense_strategy.vfm_model='
                 'vit_tiny_patch16_224']
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


def run_planted(config: Path, tmp_path: Path, extra_options=(),
                corrupted: bool = True):
    """Plant a tiny dataset for ``config`` (shrunk), run ``tools/test.py``
    on it with the planted model's checkpoint; (metrics, planted data)."""
    cfg = Config.fromfile(str(config))
    return planted_run(config, tmp_path,
                       [*shrink_options(cfg), *extra_options],
                       corrupted=corrupted)


@pytest.mark.parametrize('config', CONFIGS, ids=lambda p: p.stem)
def test_config_runs_tools_test(config, tmp_path):
    """tools/test.py reports the metrics counted by hand on planted labels
    (image 1 exact, image 2 with wrong labels and ignored pixels)."""
    cfg = Config.fromfile(str(config))
    assert cfg.model.text.class_names.endswith('.txt')
    metrics, planted = run_planted(config, tmp_path)
    expected = planted.expected_metrics()
    # the corruption is visible: 512 pixels wrong, 512 of 12288 ignored
    assert expected['aAcc'] == pytest.approx(100 * (1 - 512 / 11776))
    assert_reported(metrics, expected, planted.num_classes)


@pytest.mark.parametrize('name', ['sclip_ade', 'maskclip_voc20',
                                  'gem_official_voc21', 'naclip_pc59'])
def test_uncorrupted_planted_labels_score_exactly_100(name, tmp_path):
    """Ground truth = the prediction of a direct call on the loaded,
    normalised image: through the real tool every metric is 100."""
    metrics, planted = run_planted(
        REPO / 'configs' / 'baselines' / f'{name}.py', tmp_path,
        corrupted=False)
    assert {k: float(metrics[k]) for k in ('aAcc', 'mIoU', 'mAcc')} == \
        dict(aAcc=100.0, mIoU=100.0, mAcc=100.0)
    # a non-trivial label map: several classes in the first image
    assert len(np.unique(planted.predictions[0])) >= 2


def test_planted_check_catches_a_label_shift(tmp_path):
    """A negative control: ground truth written without the +1 shift of a
    reduce_zero_label dataset (PC59) is read one class off everywhere, so
    no pixel matches."""
    from mmseg_ovss.testing import planted as planted_module
    config = REPO / 'configs' / 'baselines' / 'sclip_pc59.py'
    encoding = dict(planted_module.LABEL_ENCODING)
    planted_module.LABEL_ENCODING['pc59'] = (0, 255)
    try:
        metrics, planted = run_planted(config, tmp_path, corrupted=False)
    finally:
        planted_module.LABEL_ENCODING.clear()
        planted_module.LABEL_ENCODING.update(encoding)
    assert float(metrics['mIoU']) == 0.0


def test_vocabulary_defaults_to_dataset_metainfo(tmp_path):
    """Without a class-name file the dataset's classes are the vocabulary."""
    config = REPO / 'configs' / 'baselines' / 'clearclip_voc20.py'
    metrics, planted = run_planted(config, tmp_path,
                                   ['model.text.class_names=None'])
    assert_reported(metrics, planted.expected_metrics(), planted.num_classes)
