"""FreeCPHead on real tiny CLIP features; configs; tools/test.py end to end."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import mmseg_ovss  # noqa: F401
from mmseg_ovss.clip.strategies import build_dense_strategy
from mmseg_ovss.clip.text_encoder import CLIPTextEncoder, build_tokenizer
from mmseg_ovss.clip.vision_encoder import DenseCLIPVisionEncoder
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.clip.dense_head import resolve_layer_indices
from mmseg_ovss.freecp.consistency import spatial_consistency
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


@pytest.mark.filterwarnings('ignore:no FreeCP description')
def test_crop_precision_reaches_the_crop_encoder(parts):
    encoder, vocab, windows = parts
    asked = []

    def encode_recording_dtype(crops, dtype=None):
        asked.append(dtype)
        return encoder.encode_cls(crops, dtype=dtype)

    # ap_threshold 0: every candidate pair is ambiguous, so crops are encoded
    for precision, dtype in (('model', None), ('fp32', torch.float32),
                             ('bf16', torch.bfloat16)):
        head = build_head(crop_precision=precision, ap_threshold=0.0)
        feats = features(encoder, head, windows[:1])
        feats.encode_image = encode_recording_dtype
        asked.clear()
        with torch.no_grad():
            maps = head(feats, vocab)
        assert asked and set(asked) == {dtype}, precision
        assert maps.shape == (1, 5, 4, 5)
    # an encoder that takes no dtype is used as it is
    head = build_head(crop_precision='bf16', ap_threshold=0.0)
    feats = features(encoder, head, windows[:1])
    feats.encode_image = lambda crops: encode_recording_dtype(crops)
    asked.clear()
    with torch.no_grad():
        head(feats, vocab)
    assert asked and set(asked) == {None}
    with pytest.raises(OVSSConfigError, match='crop_precision'):
        build_head(crop_precision='int8')


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


@pytest.mark.filterwarnings('ignore:no FreeCP description')
def test_head_mean_capture_gives_the_same_maps(parts):
    encoder, vocab, windows = parts
    head = build_head()
    assert head.attention_heads == 'mean'
    assert build_head(affinity_head=0).attention_heads == 0
    layers = resolve_layer_indices(head.required_attention_layers,
                                   encoder.num_layers)
    with torch.no_grad():
        full = head(features(encoder, head, windows), vocab)
        mean = head(encoder(windows, attention_layers=layers,
                            attention_heads='mean'), vocab)
        gem = build_head(affinity_head=2)
        full_gem = gem(features(encoder, gem, windows), vocab)
        one = gem(encoder(windows, attention_layers=layers,
                          attention_heads=2), vocab)
        wrong = encoder(windows, attention_layers=layers,
                        attention_heads=1)
    torch.testing.assert_close(mean, full)
    torch.testing.assert_close(one, full_gem)
    with pytest.raises(OVSSConfigError, match='head 2'):
        gem(wrong, vocab)


def test_attention_grid_must_match_token_grid(parts):
    encoder, vocab, windows = parts
    head = build_head(ap_text='templates', descriptions=None)
    feats = features(encoder, head, windows[:1])
    # ProxyCLIP: tokens on an 8-pixel grid, attention on CLIP's 16-pixel one
    feats.patch_tokens = F.interpolate(feats.patch_tokens, scale_factor=2)
    with pytest.raises(OVSSConfigError,
                       match='same patch grid.*vit_base_patch16_224'):
        head(feats, vocab)


# ------------------------------------------------------ purification scope
def build_segmentor(scope, test_cfg, **head):
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='CLIPDenseSegmentor',
        clip=dict(model_name=MODEL, random_init=True),
        strategy=dict(type='SCLIP', residual=False),
        decode_head=dict(type='FreeCPHead', descriptions=None,
                         ap_text='templates', crop_size=32,
                         purification_scope=scope, **head),
        text=dict(templates='single'),
        test_cfg=test_cfg)).eval()
    model.set_vocabulary(['background', 'cat, kitten', 'dog', 'grass',
                          'car', 'tree'])
    return model


@pytest.mark.parametrize('elimination', ['window', 'local'])
@pytest.mark.parametrize('test_cfg', [
    dict(mode='whole'),
    dict(mode='slide', crop_size=(64, 96), stride=(32, 32))])
@torch.no_grad()
def test_image_scope_equals_window_scope_on_one_window(test_cfg,
                                                       elimination):
    opts = dict(rp_threshold=0.05, ap_threshold=0.2,
                ap_elimination=elimination)
    torch.manual_seed(3)
    images = torch.randn(2, 3, 56, 72)  # not a multiple of the patch
    outs = {}
    for scope in ('window', 'image'):
        model = build_segmentor(scope, test_cfg, **opts)
        outs[scope] = model.predict(images)
    for window, image in zip(outs['window'], outs['image']):
        torch.testing.assert_close(image.seg_logits.data,
                                   window.seg_logits.data)
        assert torch.equal(image.pred_sem_seg.data, window.pred_sem_seg.data)
    logits = outs['image'][0].seg_logits.data
    assert logits.shape == (6, 56, 72)
    removed = (logits[1:] == 0).flatten(1).all(dim=1)
    assert removed.any() and not removed.all()  # purification did act


@torch.no_grad()
def test_image_scope_purifies_once_per_image_on_slide():
    slide = dict(mode='slide', crop_size=(32, 32), stride=(16, 16))
    model = build_segmentor('image', slide, purification='rp')
    head = model.decode_head
    vocab = model.vocabulary_embeddings()
    torch.manual_seed(3)
    image = torch.randn(1, 3, 56, 72)  # 12 windows, last ones off-grid
    stitched = model._stitched_maps(image, vocab)
    assert stitched.shape == (1, 10, 56, 72)  # refined + softmax, 5 classes
    grid = F.avg_pool2d(F.pad(stitched, (0, 8, 0, 8), mode='replicate'), 16)
    scores = spatial_consistency(grid[:, 5:], grid[:, :5], 'half_dice')[0]
    threshold = scores.median().item()
    head.pipeline.rp_threshold = threshold
    calls = []
    purify = head.pipeline.purify

    def spy(cams, refined, *args, **kwargs):
        calls.append(tuple(refined.shape))
        return purify(cams, refined, *args, **kwargs)

    head.pipeline.purify = spy
    maps = model.inference_maps(image, vocab)
    assert calls == [(1, 5, 4, 5)]  # once, on the image's patch grid
    removed = scores <= threshold
    assert removed.any() and not removed.all()
    foreground = maps[0, 1:]
    assert torch.all(foreground[removed] == 0)  # removed everywhere
    assert torch.all(foreground[~removed].flatten(1).amax(1) > 0)
    assert torch.all(maps[0, 0] == 0)
    # per window, the same threshold removes classes in some windows only
    window = build_segmentor('window', slide, purification='rp',
                             rp_threshold=threshold)
    assert not torch.allclose(window.inference_maps(image, vocab), maps)
    # the hook is batched: two images at once == one by one
    other = model._stitched_maps(image.flip(-1), vocab)
    images = torch.cat([image, image.flip(-1)])
    both = head.image_maps(torch.cat([stitched, other]), images, vocab,
                           model.backbone.encode_cls, 16)
    torch.testing.assert_close(both[:1], maps)
    torch.testing.assert_close(
        both[1:], head.image_maps(other, images[1:], vocab,
                                  model.backbone.encode_cls, 16))


def test_purification_scope_option_errors():
    with pytest.raises(OVSSConfigError, match='purification_scope'):
        build_head(purification_scope='dataset')
    assert build_head(purification_scope='image').window_resize_mode == \
        'nearest-exact'
    assert build_head().window_resize_mode == 'bilinear'


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
    if model.strategy.type == 'ProxyCLIP':
        # a tiny random DINO on the same 16-px grid as CLIP's attention
        model.strategy.update(random_init=True,
                              vfm_model='vit_tiny_patch16_224')
    for loader in ('test_dataloader', 'val_dataloader'):
        cfg[loader].update(num_workers=0, persistent_workers=False)
        for step in cfg[loader].dataset.pipeline:
            if step.type == 'Resize':
                step.scale = (2048, 48)
    return cfg


FREECP_CONFIGS = sorted(p.stem for p in (REPO / 'configs' / 'freecp').glob(
    '*.py'))


@pytest.mark.parametrize('name', FREECP_CONFIGS)
def test_tools_test_end_to_end(name, tiny_data_root, tmp_path):
    """Every FreeCP config runs tools/test.py (tiny random CLIP/DINO)."""
    cfg = shrink(Config.fromfile(str(REPO / 'configs' / 'freecp' /
                                     f'{name}.py')))
    path = tmp_path / f'{name}.py'
    cfg.dump(str(path))
    metrics = run_tool('test', [path, '--work-dir', tmp_path / 'work'])
    assert 0.0 <= metrics['mIoU'] <= 100.0
