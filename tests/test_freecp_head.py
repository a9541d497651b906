"""FreeCPHead on real tiny CLIP features; configs; tools/test.py end to end."""
import json
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

import mmseg_ovss  # noqa: F401
from mmseg_ovss.clip.strategies import build_dense_strategy
from mmseg_ovss.clip.text_encoder import CLIPTextEncoder, build_tokenizer
from mmseg_ovss.clip.vision_encoder import DenseCLIPVisionEncoder
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.clip.dense_head import resolve_layer_indices
from mmseg_ovss.testing.tiny_clip import build_tiny_clip
from mmseg_ovss.testing.tools import run_tool
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

REPO = Path(__file__).resolve().parents[1]
MODEL = 'ovss-tiny-ViT-16'
CLASSES = (('sky', 'wall'), ('cat', ), ('dog', ), ('grass', ), ('car', ))


@pytest.fixture(scope='module')
def parts():
    model = build_tiny_clip(MODEL, seed=0)
    encoder = DenseCLIPVisionEncoder(model.visual,
                                     build_dense_strategy('SCLIP'))
    text = CLIPTextEncoder(model, build_tokenizer(MODEL), model_key='tiny',
                           templates='single')
    vocab = text(Vocabulary(CLASSES, 0))
    torch.manual_seed(1)
    windows = torch.randn(3, 3, 64, 80)
    return encoder, vocab, windows


def features(encoder, head, windows):
    layers = resolve_layer_indices(head.required_attention_layers,
                                   encoder.num_layers)
    with torch.no_grad():
        return encoder(windows, attention_layers=layers)


def build_head(**kwargs):
    cfg = dict(type='FreeCPHead', rp_threshold=0.0, ap_threshold=0.3,
               descriptions='data/descriptions/coco_object.json', crop_size=32)
    cfg.update(kwargs)
    return MODELS.build(cfg)


@pytest.mark.filterwarnings('ignore:no FreeCP description')
def test_head_output_and_any_batch_size(parts):
    encoder, vocab, windows = parts
    head = build_head()
    assert head.required_attention_layers == 'all_but_last'
    feats = features(encoder, head, windows)
    assert sorted(feats.attn_weights) == list(range(encoder.num_layers - 1))
    with torch.no_grad():
        maps = head(feats, vocab)
    assert maps.shape == (3, 5, 4, 5)
    assert torch.all(maps[:, 0] == 0)            # background channel
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    # windows are purified independently: batch of 3 == 3 batches of 1
    with torch.no_grad():
        one_by_one = torch.cat([head(features(encoder, head, windows[i:i + 1]),
                                     vocab) for i in range(3)])
    torch.testing.assert_close(maps, one_by_one, atol=1e-5, rtol=1e-4)
    scores = head.class_scores(maps, vocab)
    torch.testing.assert_close(scores[:, 0], 1 - maps[:, 1:].amax(1))
    torch.testing.assert_close(scores[:, 1:], maps[:, 1:])


@pytest.mark.filterwarnings('ignore:no FreeCP description')
def test_text_options_change_only_their_part(parts):
    encoder, vocab, windows = parts
    base = build_head()
    feats = features(encoder, base, windows[:1])
    queries, owners, crop = base._text(vocab)
    assert torch.equal(queries, vocab.query_embeddings)
    init = build_head(initial_text='descriptions')
    q2, o2, crop2 = init._text(vocab)
    # background keeps its template synonyms, the others use descriptions
    assert o2.tolist() == [0, 0, 1, 2, 3, 4]
    torch.testing.assert_close(q2[:2], vocab.query_embeddings[:2])
    torch.testing.assert_close(q2[2:], crop[1:])
    torch.testing.assert_close(crop2, crop)
    templ = build_head(ap_text='templates')
    q3, _, crop3 = templ._text(vocab)
    assert torch.equal(q3, queries) and not torch.allclose(crop3[1:], crop[1:])
    with torch.no_grad():
        # no ambiguity purification: the AP text cannot matter
        a = build_head(purification='rp')(feats, vocab)
        b = build_head(purification='rp', ap_text='templates')(feats, vocab)
    torch.testing.assert_close(a, b)


def test_head_option_errors():
    with pytest.raises(OVSSConfigError, match='description file'):
        MODELS.build(dict(type='FreeCPHead', descriptions=None))
    with pytest.raises(OVSSConfigError, match='initial_text'):
        build_head(initial_text='vicuna')
    head = build_head(descriptions='data/descriptions/missing_vocab.json')
    with pytest.raises(OVSSDataError, match='generate_descriptions'):
        head._description_table()
    head = MODELS.build(dict(type='FreeCPHead', descriptions=None,
                             ap_text='templates', affinity_layers=[-3, -2]))
    assert head.required_attention_layers == [-3, -2]


# ----------------------------------------------------------------- configs
FREECP = sorted((REPO / 'configs' / 'freecp').glob('*.py'))
ABLATIONS = sorted((REPO / 'configs' / 'freecp' / 'ablations').glob('*.py'))
METHODS = ('maskclip', 'sclip', 'clearclip', 'gem', 'naclip', 'proxyclip')
SHORT = {'voc21': 'voc21', 'pc60': 'pc60', 'object': 'coco_object',
         'voc20': 'voc20', 'city': 'cityscapes', 'pc59': 'pc59',
         'ade': 'ade150', 'stuff': 'coco_stuff171'}
# FACTS §3: (T_rp, T_ap, short side, window)
AUTHORS = {'voc21': (0.15, 0.8, 448, 384), 'pc60': (0.1, 0.7, 448, 384),
           'object': (0.15, 0.8, 448, 384), 'voc20': (0.15, 0.7, 448, 384),
           'city': (0.1, 0.8, 560, 224), 'pc59': (0.1, 0.7, 448, 384),
           'ade': (0.05, 0.7, 448, 384), 'stuff': (0.05, 0.7, 448, 384)}


def test_every_baseline_has_every_benchmark():
    assert {p.stem for p in FREECP} == {
        f'{m}_{d}' for m in METHODS for d in SHORT}


@pytest.mark.parametrize('config', FREECP, ids=lambda p: p.stem)
def test_freecp_config_differs_from_baseline_only_where_documented(config):
    method, short = config.stem.split('_')
    cfg = Config.fromfile(str(config))
    base = Config.fromfile(str(REPO / 'configs' / 'baselines' / config.name))
    rp, ap, side, window = AUTHORS[short]
    head = cfg.model.decode_head
    assert head.type == 'FreeCPHead' and 'logit_scale' not in head
    assert (head.rp_threshold, head.ap_threshold) == (rp, ap)
    assert head.descriptions == f'data/descriptions/{SHORT[short]}.json'
    assert cfg.model.test_cfg.crop_size == (window, window)
    assert cfg.model.test_cfg.stride == (112, 112)
    resize = [s for s in cfg.test_dataloader.dataset.pipeline
              if s.type == 'Resize'][0]
    assert resize.scale == (2048, side)
    assert cfg.model.prob_thd == 0 and cfg.model.area_thd is None
    allowed = {'decode_head', 'test_cfg', 'prob_thd', 'area_thd', 'strategy',
               'pamr', 'text'}
    changed = {k for k in set(cfg.model) | set(base.model)
               if cfg.model.get(k) != base.model.get(k)}
    assert changed <= allowed, changed - allowed
    assert cfg.model.text == base.model.text  # same vocabulary
    assert (cfg.test_dataloader.dataset.type ==
            base.test_dataloader.dataset.type)
    MODELS.build(head)


@pytest.mark.parametrize('config', ABLATIONS, ids=lambda p: p.stem)
def test_ablation_config_changes_one_option(config):
    cfg = Config.fromfile(str(config))
    parent = Config.fromfile(str(config.parent.parent /
                                 _parent_name(config)))
    changed = {k for k in cfg.model if cfg.model[k] != parent.model.get(k)}
    if config.stem.startswith('table6'):
        assert changed == {'clip'}
    else:
        assert changed == {'decode_head'}
        diff = {k for k in cfg.model.decode_head
                if cfg.model.decode_head[k] != parent.model.decode_head.get(k)}
        assert diff in ({'purification'}, {'initial_text', 'ap_text'},
                        {'initial_text'})
        MODELS.build(cfg.model.decode_head)


def _parent_name(config: Path) -> str:
    text = config.read_text()
    return text.split("_base_ = ['../")[1].split("'")[0]


def shrink(cfg: Config) -> Config:
    model = cfg.model
    model.clip.update(model_name=MODEL, random_init=True)
    model.text.templates = 'single'
    model.test_cfg.update(crop_size=(32, 32), stride=(16, 16))
    model.decode_head.crop_size = 32
    for loader in ('test_dataloader', 'val_dataloader'):
        cfg[loader].update(num_workers=0, persistent_workers=False)
        for step in cfg[loader].dataset.pipeline:
            if step.type == 'Resize':
                step.scale = (2048, 48)
    return cfg


@pytest.mark.parametrize('name', ['sclip_ade', 'gem_voc21', 'maskclip_city'])
def test_tools_test_end_to_end(name, tiny_data_root, tmp_path):
    cfg = shrink(Config.fromfile(str(REPO / 'configs' / 'freecp' /
                                     f'{name}.py')))
    path = tmp_path / f'{name}.py'
    cfg.dump(str(path))
    metrics = run_tool('test', [path, '--work-dir', tmp_path / 'work'])
    assert 0.0 <= metrics['mIoU'] <= 100.0
