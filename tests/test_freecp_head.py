"""FreeCPHead on real tiny CLIP features; configs; tools/test.py end to end
on planted tiny datasets (mmseg_ovss.testing.planted): hand-counted metrics."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import mmseg_ovss  # noqa: F401
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.clip.dense_head import resolve_layer_indices
from mmseg_ovss.testing.labels import (assert_equal_where_decided,
                                       decided_pixels)
from mmseg_ovss.testing.planted import assert_reported, run_planted
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

REPO = Path(__file__).resolve().parents[1]
MODEL = 'ovss-tiny-ViT-16'
CLASSES = (('sky', 'wall'), ('cat', ), ('dog', ), ('grass', ), ('car', ))


@pytest.fixture(scope='module')
def parts(tiny_towers):
    encoder, text = tiny_towers
    vocab = text(Vocabulary(CLASSES, 0))
    torch.manual_seed(1)
    windows = torch.randn(3, 3, 64, 80)
    return encoder, vocab, windows


def dense(encoder, windows, logit_scale=None, **kwargs):
    """The backbone's dense features with CLIP's temperature attached,
    as CLIPDenseSegmentor passes them to its head."""
    with torch.no_grad():
        feats = encoder.forward_dense(windows, **kwargs)
    feats.logit_scale = logit_scale
    return feats


# CLIP's temperature of the random tiny model: open_clip initialises the
# log scale to log(1 / 0.07) in float32 (the text encoder holds it)
INIT_SCALE = (torch.ones([]) * math.log(1 / 0.07)).exp()


def features(encoder, head, windows, logit_scale=INIT_SCALE):
    """Dense features for ``head`` (its attention layers), with CLIP's
    temperature as the segmentor attaches it."""
    layers = resolve_layer_indices(head.required_attention_layers,
                                   encoder.num_layers)
    return dense(encoder, windows, logit_scale, attention_layers=layers)


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
    assert maps.min() >= 0 and maps.max() <= 1   # min-max normalised
    # Windows are purified independently. With the batch shape kept, the
    # other windows' content changes nothing, bit for bit (the float32
    # products are blocked the same way).
    torch.manual_seed(5)
    for i in range(3):
        others = torch.randn_like(windows)
        others[i] = windows[i]
        with torch.no_grad():
            mixed = head(features(encoder, head, others), vocab)
        assert torch.equal(mixed[i], maps[i]), i
    # Any batch size runs and takes the same decisions (which classes
    # survive in which window). Its values differ by float32 rounding (Eq.
    # 1's D-term products are blocked differently) amplified by the
    # per-class min-max of Eq. 3's refined maps, which are nearly flat with
    # random weights (range / max about 1e-3 here), so no useful a-priori
    # bound on those values exists; the bit-exact check above covers the
    # independence.
    with torch.no_grad():
        one_by_one = torch.cat([head(features(encoder, head,
                                              windows[i:i + 1]), vocab)
                                for i in range(3)])
    assert one_by_one.shape == maps.shape
    assert torch.equal(maps.flatten(2).amax(-1) > 0,
                       one_by_one.flatten(2).amax(-1) > 0)


def test_background_score_is_one_minus_the_best_class(parts):
    _, vocab, _ = parts                # 5 classes, background 0
    head = build_head()
    maps = torch.tensor([[0.0, 0.25, 0.75, 0.5, 0.0],    # pixel 1
                         [0.0, 0.0, 0.0, 0.0, 0.0],      # nothing left
                         [0.0, 1.0, 0.25, 0.0, 0.5]]).T.reshape(1, 5, 1, 3)
    scores = head.class_scores(maps, vocab)
    assert scores[0, 0, 0].tolist() == [0.25, 1.0, 0.0]
    assert torch.equal(scores[:, 1:], maps[:, 1:])


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
    # rows are copied, not recomputed: equal bit for bit
    assert torch.equal(q2[:2], vocab.query_embeddings[:2])
    assert torch.equal(q2[2:], crop[1:])
    assert torch.equal(crop2, crop)
    templ = build_head(ap_text='templates')
    q3, _, crop3 = templ._text(vocab)
    assert torch.equal(q3, queries) and not torch.allclose(crop3[1:], crop[1:])
    with torch.no_grad():
        # no ambiguity purification: the AP text cannot matter
        a = build_head(purification='rp')(feats, vocab)
        b = build_head(purification='rp', ap_text='templates')(feats, vocab)
    assert torch.equal(a, b)  # the very same operations


@pytest.mark.filterwarnings('ignore:no FreeCP description')
def test_crop_precision_reaches_the_crop_encoder(parts):
    encoder, vocab, windows = parts
    asked = []

    def encode_recording_dtype(crops, dtype=None):
        asked.append(dtype)
        return encoder.encode_cls(crops, dtype=dtype)

    # default: the model's own precision (fp32 here), exact on every CPU
    assert build_head().crop_precision == 'model'
    # ap_threshold 0: every candidate pair is ambiguous, so crops are encoded
    for precision, dtype in ((None, None), ('model', None),
                             ('fp32', torch.float32),
                             ('bf16', torch.bfloat16)):
        option = {} if precision is None else dict(crop_precision=precision)
        head = build_head(ap_threshold=0.0, **option)
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
        mean = head(dense(encoder, windows, INIT_SCALE,
                          attention_layers=layers, attention_heads='mean'),
                    vocab)
        gem = build_head(affinity_head=2)
        full_gem = gem(features(encoder, gem, windows), vocab)
        one = gem(dense(encoder, windows, INIT_SCALE,
                        attention_layers=layers, attention_heads=2), vocab)
        wrong = dense(encoder, windows, INIT_SCALE, attention_layers=layers,
                      attention_heads=1)
    # the same mean / head pick of the same numbers, only done earlier
    assert torch.equal(mean, full)
    assert torch.equal(one, full_gem)
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


@torch.no_grad()
def test_cam_temperature_is_the_models_logit_scale(tiny_towers, parts):
    """Eq. 1 uses the CLIP model's logit_scale.exp() (the authors' code),
    held by the text encoder; a random open_clip model has
    exp(ln(1 / 0.07)) = 14.29, not 100."""
    encoder, text = tiny_towers
    _, vocab, windows = parts
    eps = torch.finfo(torch.float32).eps
    assert abs(float(text.logit_scale) - 1 / 0.07) <= 4 * eps / 0.07
    assert torch.equal(text.logit_scale, INIT_SCALE)
    head = build_head()
    assert head.logit_scale is None
    feats = features(encoder, head, windows[:1], text.logit_scale)
    own = head(feats, vocab)
    explicit = build_head(logit_scale=float(text.logit_scale))(feats,
                                                               vocab)
    hundred = build_head(logit_scale=100.0)(feats, vocab)
    assert torch.equal(own, explicit)
    assert not torch.allclose(own, hundred)
    # the backbone's own dense features carry no temperature: say so
    bare = features(encoder, head, windows[:1], logit_scale=None)
    assert bare.logit_scale is None
    with pytest.raises(OVSSConfigError, match='logit_scale=100'):
        head(bare, vocab)
    assert torch.equal(hundred, build_head(logit_scale=100.0)(bare, vocab))
    with pytest.raises(OVSSConfigError, match='positive'):
        build_head(logit_scale=0)


@torch.no_grad()
def test_segmentor_reads_the_logit_scale_it_holds():
    slide = dict(mode='slide', crop_size=(32, 32), stride=(16, 16))
    model = build_segmentor('window', slide)
    keys = model.state_dict().keys()
    assert sum('logit_scale' in key for key in keys) == 1  # not duplicated
    # new weights: the parameter is CLIP's log temperature
    dict(model.text_encoder.named_parameters())['logit_scale'].fill_(
        math.log(30.0))
    feats = model.extract_feat(torch.randn(1, 3, 32, 32))
    assert abs(float(feats.logit_scale) - 30.0) <= 30 * 8 * \
        torch.finfo(torch.float32).eps


@pytest.mark.parametrize('scope', ['window', 'image'])
@torch.no_grad()
def test_background_only_vocabulary_is_all_background(scope):
    """Nothing to purify: every pixel is background, with score 1."""
    slide = dict(mode='slide', crop_size=(32, 32), stride=(16, 16))
    model = build_segmentor(scope, slide)
    model.set_vocabulary(['background, sky, wall'])
    for sample in model.predict(torch.randn(2, 3, 40, 56)):
        assert torch.equal(sample.pred_sem_seg.data,
                           torch.zeros(1, 40, 56, dtype=torch.long))
        assert torch.equal(sample.seg_logits.data, torch.ones(1, 40, 56))


# ------------------------------------------------------ purification scope
def build_segmentor(scope, test_cfg, **head):
    """FreeCP over SCLIP on the tiny random CLIP (6 classes)."""
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='CLIPDenseSegmentor',
        clip=dict(model_name=MODEL, random_init=True),
        backbone=dict(type='OpenCLIPViT',
                      dense_strategy=dict(type='SCLIP', residual=False)),
        text_encoder=dict(type='OpenCLIPTextEncoder', templates='single'),
        decode_head=dict(type='FreeCPHead', descriptions=None,
                         ap_text='templates', crop_size=32,
                         purification_scope=scope, **head),
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
    # temperature 100: sharp enough CAMs for RP to act on random weights
    opts = dict(rp_threshold=0.05, ap_threshold=0.2, logit_scale=100.0,
                ap_elimination=elimination)
    torch.manual_seed(3)
    images = torch.randn(2, 3, 56, 72)  # not a multiple of the patch
    outs = {}
    for scope in ('window', 'image'):
        model = build_segmentor(scope, test_cfg, **opts)
        outs[scope] = model.predict(images)
    # 'image' averages p x p copies of each grid value (nearest resize,
    # then patch means): float32 sums of p^2 terms of maps in [0, 1]
    atol = 16 ** 2 * torch.finfo(torch.float32).eps
    for window, image in zip(outs['window'], outs['image']):
        torch.testing.assert_close(image.seg_logits.data,
                                   window.seg_logits.data, atol=atol, rtol=0)
        # the labels agree wherever the two best classes are more than the
        # rounding apart; a near tie (0.5000008 against 0.4999991 on an
        # AVX2 AMD EPYC) may go either way
        decided = decided_pixels(window.seg_logits.data, 2 * atol)
        assert_equal_where_decided(image.pred_sem_seg.data[0],
                                   window.pred_sem_seg.data[0], decided,
                                   min_fraction=0.99)
    logits = outs['image'][0].seg_logits.data
    assert logits.shape == (6, 56, 72)
    removed = (logits[1:] == 0).flatten(1).all(dim=1)
    assert removed.any() and not removed.all()  # purification did act


def _patch_means(maps, patch):
    """Mean of every patch square, the border replicated (index clamping)."""
    height, width = maps.shape[-2:]
    gh, gw = -(-height // patch), -(-width // patch)
    rows = torch.arange(gh * patch).clamp(max=height - 1)
    cols = torch.arange(gw * patch).clamp(max=width - 1)
    full = maps[..., rows, :][..., cols]
    return full.reshape(*maps.shape[:2], gh, patch, gw, patch).mean((3, 5))


@torch.no_grad()
def test_image_scope_purifies_once_per_image_on_slide():
    slide = dict(mode='slide', crop_size=(32, 32), stride=(16, 16))
    model = build_segmentor('image', slide, purification='rp')
    head = model.decode_head
    vocab = model.vocabulary_embeddings()
    torch.manual_seed(3)
    image = torch.randn(1, 3, 56, 72)  # 12 windows, last ones off-grid
    stitched = model.stitched(image, vocab).render()
    assert stitched.shape == (1, 10, 56, 72)  # refined + softmax, 5 classes
    grid = _patch_means(stitched, 16)[0]
    refined, cams = grid[:5], grid[5:]
    # Eq. 5 as the authors' half Dice: sum(M R) / (sum M + sum R)
    scores = (cams * refined).sum((1, 2)) / (cams.sum((1, 2)) +
                                             refined.sum((1, 2)))
    ordered = scores.sort().values
    threshold = float(ordered[2] + ordered[3]) / 2  # between two classes
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
    assert removed.sum() == 3
    foreground = maps[0, 1:]
    assert torch.all(foreground[removed] == 0)  # removed everywhere
    assert torch.all(foreground[~removed].flatten(1).amax(1) > 0)
    assert torch.all(maps[0, 0] == 0)
    # per window, the same threshold removes classes in some windows only
    window = build_segmentor('window', slide, purification='rp',
                             rp_threshold=threshold)
    assert not torch.allclose(window.inference_maps(image, vocab), maps)
    # the hook also takes full-size tensors of several images at once,
    # with the numbers of the per-image (banded) path: the same bilinear
    # terms (at most 4, weights in [0, 1]) of maps in [0, 1], summed as
    # matrix products there (SeparableStitch): a few roundings apart
    other = model.stitched(image.flip(-1), vocab).render()
    images = torch.cat([image, image.flip(-1)])
    both = head.image_maps(torch.cat([stitched, other]), images, vocab,
                           model.backbone.encode_cls, 16)
    bound = 8 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(both[:1], maps, atol=bound, rtol=0)
    torch.testing.assert_close(
        both[1:], model.inference_maps(image.flip(-1), vocab), atol=bound,
        rtol=0)


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
# the authors' values (resolution: paper Sec. 4.2; thresholds: the
# rp_thres / ap_thres of chenqi1126/FreeCP configs/cfg_*.py):
# (T_rp, T_ap, short side, window)
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
    # seg_logits: FreeCP stores its own scores, not a baseline's
    # renormalised ones (NACLIP)
    allowed = {'decode_head', 'test_cfg', 'prob_thd', 'area_thd', 'backbone',
               'pamr', 'text', 'seg_logits'}
    changed = {k for k in set(cfg.model) | set(base.model)
               if cfg.model.get(k) != base.model.get(k)}
    assert changed <= allowed, changed - allowed
    # the image tower differs at most in its dense strategy's options
    backbone = {k for k in set(cfg.model.backbone) | set(base.model.backbone)
                if cfg.model.backbone.get(k) != base.model.backbone.get(k)}
    assert backbone <= {'dense_strategy'}, backbone
    assert (cfg.model.backbone.dense_strategy.type ==
            base.model.backbone.dense_strategy.type)
    assert cfg.model.text == base.model.text  # same vocabulary
    assert cfg.model.text_encoder == base.model.text_encoder  # and prompts
    assert (cfg.test_dataloader.dataset.type ==
            base.test_dataloader.dataset.type)
    MODELS.build(head)


@pytest.mark.parametrize('config', ABLATIONS, ids=lambda p: p.stem)
def test_ablation_config_changes_one_option(config):
    cfg = Config.fromfile(str(config))
    parent = Config.fromfile(str(_parent_path(config)))
    changed = {k for k in cfg.model if cfg.model[k] != parent.model.get(k)}
    if config.stem.startswith('table6'):
        assert changed == {'clip'}
    elif config.stem.startswith(('table1', 'fig1b')):
        assert changed == {'gt_vocabulary'}  # the oracle rows
    else:
        assert changed == {'decode_head'}
        diff = {k for k in cfg.model.decode_head
                if cfg.model.decode_head[k] != parent.model.decode_head.get(k)}
        # Table 4: the text sources, the baseline head's queries, or the
        # description slot of another source (GPT-3.5)
        assert diff in ({'purification'}, {'initial_text', 'ap_text'},
                        {'initial_text'}, {'descriptions'},
                        {'queries', 'descriptions'},
                        {'initial_text', 'ap_text', 'descriptions'})
        MODELS.build(cfg.model.decode_head)


def _parent_path(config: Path) -> Path:
    text = config.read_text()
    return (config.parent / text.split("_base_ = ['")[1].split("'")[0]
            ).resolve()


def shrink(cfg: Config) -> Config:
    model = cfg.model
    model.clip.update(model_name=MODEL, random_init=True)
    model.text_encoder.templates = 'single'
    model.test_cfg.update(crop_size=(32, 32), stride=(16, 16))
    model.decode_head.crop_size = 32
    strategy = model.backbone.dense_strategy
    if strategy.type == 'ProxyCLIP':
        # a tiny random DINO on the same 16-px grid as CLIP's attention
        strategy.update(random_init=True, vfm_model='vit_tiny_patch16_224')
    for loader in ('test_dataloader', 'val_dataloader'):
        cfg[loader].update(num_workers=0, persistent_workers=False)
        for step in cfg[loader].dataset.pipeline:
            if step.type == 'Resize':
                step.scale = (2048, 48)
    return cfg


FREECP_CONFIGS = sorted(p.stem for p in (REPO / 'configs' / 'freecp').glob(
    '*.py'))


def run_shrunk(name: str, tmp_path: Path, corrupted: bool = True):
    """Plant a tiny dataset for the shrunk FreeCP config ``name`` and run
    tools/test.py on it: (metrics, planted data)."""
    cfg = shrink(Config.fromfile(str(REPO / 'configs' / 'freecp' /
                                     f'{name}.py')))
    path = tmp_path / f'{name}.py'
    cfg.dump(str(path))
    return run_planted(path, tmp_path, corrupted=corrupted)


@pytest.mark.parametrize('name', FREECP_CONFIGS)
def test_tools_test_end_to_end(name, tmp_path):
    """Every FreeCP config runs tools/test.py (tiny random CLIP/DINO) and
    reports the metrics counted by hand on planted labels: the ground truth
    is the model's own direct prediction on the hand-loaded image, exact in
    image 1, with a block of wrong labels and a block of ignored pixels in
    image 2."""
    metrics, planted = run_shrunk(name, tmp_path)
    expected = planted.expected_metrics()
    # the corruption is visible: 512 pixels wrong, 512 of 12288 ignored
    assert expected['aAcc'] == pytest.approx(100 * (1 - 512 / 11776))
    assert_reported(metrics, expected, planted.num_classes)


@pytest.mark.parametrize('name', ['naclip_stuff', 'maskclip_city'])
def test_uncorrupted_planted_labels_score_exactly_100(name, tmp_path):
    """Ground truth = the direct prediction on the loaded, normalised
    image: through the real tool every metric is exactly 100, on label
    maps with several classes (so resizing and alignment are checked)."""
    metrics, planted = run_shrunk(name, tmp_path, corrupted=False)
    assert {k: float(metrics[k]) for k in ('aAcc', 'mIoU', 'mAcc')} == \
        dict(aAcc=100.0, mIoU=100.0, mAcc=100.0)
    assert len(np.unique(planted.predictions[0])) >= 2
