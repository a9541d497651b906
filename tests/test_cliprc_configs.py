"""Every shipped ZegCLIP / CLIP-RC config: keys, recipe, and its model built
on the tiny random CLIP (only the CLIP weights and widths overridden)."""
import json
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmseg_ovss.engine.launch import check_config_keys
from mmseg_ovss.testing.cliprc import TINY_CLIP, TINY_EMBED_DIMS
from mmseg_ovss.utils.errors import OVSSConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT)) for d in ('cliprc', 'zegclip')
                 for p in (ROOT / 'configs' / d).rglob('*.py'))
MAIN = [c for c in CONFIGS if 'ablations' not in c and '_to_' not in c]


def load(rel: str) -> Config:
    return Config.fromfile(str(ROOT / rel))


def tiny_model_cfg(cfg: Config) -> dict:
    """The config's model with the tiny CLIP and its 32-d embeddings."""
    model = cfg.model.to_dict()
    model['clip'] = dict(TINY_CLIP)
    model['decode_head'].update(in_channels=TINY_EMBED_DIMS,
                                embed_dims=TINY_EMBED_DIMS)
    model['decode_head']['decoder']['num_heads'] = 4
    model['class_names'] = ['cat', 'dog', 'sky']
    return model


def test_every_setting_and_method_is_shipped():
    names = {Path(c).name for c in CONFIGS if 'ablations' not in c}
    for method in ('cliprc', 'zegclip'):
        shipped = {Path(c).name for c in CONFIGS if f'/{method}/' in c}
        for data in ('voc-15-5', 'coco-stuff-156-15', 'pc60-50-10',
                     'pc59-49-10'):
            for setting in ('inductive', 'transductive', 'supervised'):
                assert f'vit-b16_{data}_{setting}.py' in shipped
        for target in ('pc60', 'pc59'):
            assert (f'vit-b16_coco-stuff-156-15_inductive_to_{target}.py'
                    in shipped)
    assert len(names) == 14


@pytest.mark.parametrize('rel', CONFIGS)
def test_config_keys_and_tiny_model_build(rel):
    import mmseg_ovss  # noqa: F401
    from mmseg.registry import MODELS
    cfg = load(rel)
    check_config_keys(cfg, rel)
    assert cfg.custom_hooks == [dict(type='DatasetVocabularyHook')]
    init_default_scope('mmseg')
    model = MODELS.build(tiny_model_cfg(cfg))
    is_cliprc = '/cliprc/' in rel and 'components_none' not in rel
    assert (model.region_bridge is not None) == is_cliprc
    learnable = {n.split('.')[0] for n, p in model.named_parameters()
                 if p.requires_grad}
    assert learnable <= {'backbone', 'decode_head', 'final_norm',
                         'region_bridge'}
    # CLIP stays frozen: only the prompts train in the backbone
    assert all('prompts' in n for n, p in model.backbone.named_parameters()
               if p.requires_grad)
    assert not any(p.requires_grad
                   for p in model.text_encoder.parameters())


@pytest.mark.parametrize('rel', MAIN)
def test_main_config_recipe(rel):
    cfg = load(rel)
    name = Path(rel).name
    dataset = name.split('_')[1]
    setting = name[:-3].split('_')[-1]
    method = Path(rel).parent.name
    # CLIP ViT-B/16 at 512, ImageNet normalisation, slide 512 / 426
    assert cfg.model.clip == dict(model_name='ViT-B-16', pretrained='openai')
    pre = cfg.model.data_preprocessor
    assert pre.mean == [123.675, 116.28, 103.53]
    assert pre.std == [58.395, 57.12, 57.375] and pre.bgr_to_rgb
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(512, 512),
                                      stride=(426, 426))
    assert cfg.model.backbone.drop_path_rate == 0.1
    k = 10 if dataset == 'voc-15-5' else 100
    assert cfg.model.backbone.prompts.num_tokens == k
    assert cfg.model.text_encoder.templates == (
        'zegclip_single' if dataset == 'voc-15-5' else 'vild')
    assert cfg.model.seen_score_offset == (
        0.1 if setting == 'inductive' else 0.0)
    assert bool(cfg.model.decode_head.self_training) == (
        setting == 'transductive')
    # recipe: AdamW 2e-5, x10 on prompts / head / final norm, warm-up 1500
    optim = cfg.optim_wrapper
    assert optim.optimizer.type == 'AdamW' and optim.optimizer.lr == 2e-5
    assert optim.optimizer.weight_decay == 0.01
    keys = optim.paramwise_cfg.custom_keys
    for key in ('backbone', 'decode_head', 'final_norm'):
        assert keys[key].lr_mult == 10.0
    assert keys['norm'].decay_mult == 0.0
    poly, = cfg.param_scheduler
    assert (poly.type, poly.warmup_iters, poly.warmup_ratio) == (
        'WarmupPolyLR', 1500, 1e-6)
    iters = {'inductive': 40000, 'transductive': 20000,
             'supervised': 40000}[setting]
    if dataset == 'coco-stuff-156-15':
        iters *= 2
    if method == 'zegclip' and dataset == 'voc-15-5':
        # ZiqinZhou66/ZegCLIP configs/voc12/: vpt_seg_{zero,fully}_vit-b_
        # 512x512_20k_12_10.py and the 10k self-training run
        # vpt_seg_zero_vit-b_512x512_10k_12_10_st.py
        iters //= 2
    assert cfg.train_cfg.max_iters == iters == poly.end
    assert (poly.power, poly.eta_min, poly.begin) == (0.9, 1e-6, 0)
    assert cfg.total_batch_size == 16
    # protocol of the data
    zsl = [t for t in cfg.train_pipeline if t.type == 'ZeroShotLabels'][0]
    assert zsl.setting == setting
    assert cfg.test_evaluator.type == 'ZeroShotIoUMetric'
    if setting == 'transductive':
        middle = iters  # the middle of the inductive run (2x as long)
        assert cfg.load_from == (
            f'work_dirs/{method}/vit-b16_{dataset}_inductive/'
            f'iter_{middle}.pth')


@pytest.mark.parametrize(
    'rel', [c for c in MAIN if c.endswith('_transductive.py')])
def test_transductive_header_says_which_pixels_get_pseudo_labels(rel):
    """The default pseudo-labeler relabels the unseen-class pixels (void
    stays ignored, ZegCLIP's rule); the header must not promise the
    ignored pixels (pixels='ignored')."""
    import mmseg_ovss  # noqa: F401
    from mmseg_ovss.models.cliprc.self_training import UnseenPseudoLabeler
    cfg = load(rel)
    labeler = UnseenPseudoLabeler.build(cfg.model.decode_head.self_training)
    assert labeler.pixels == 'unseen'
    header = ' '.join(line.lstrip('# ') for line in
                      (ROOT / rel).read_text().splitlines()
                      if line.startswith('#'))
    assert 'ignored pixels' not in header
    assert 'pixels whose ground truth is an unseen class' in header
    assert 'void stays ignored' in header


@pytest.mark.parametrize('method', ['cliprc', 'zegclip'])
def test_voc_prompts_are_the_authors_text(method):
    """ZegCLIP's voc12_single.npy (used by both authors' VOC configs) embeds
    clip.tokenize(f"a photo of a {c}"), without a period (ZiqinZhou66/
    ZegCLIP configs/_base_/datasets/text_embedding/get_embedding.ipynb)."""
    from mmseg_ovss.clip.templates import load_templates
    for setting in ('inductive', 'transductive', 'supervised'):
        cfg = load(f'configs/{method}/vit-b16_voc-15-5_{setting}.py')
        prompts = [t('sheep') for t in
                   load_templates(cfg.model.text_encoder.templates)]
        assert prompts == ['a photo of a sheep']
    # the training-free methods' 'single' keeps its period
    assert [t('sheep') for t in load_templates('single')] == [
        'a photo of a sheep.']


def _authors_lr(base, i, max_iters):
    """mmcv's lr_updater (and JSeg's optims/lr_scheduler.py PolyLR) for the
    authors' lr_config: policy='poly', power=0.9, min_lr=1e-6,
    warmup='linear', warmup_iters=1500, warmup_ratio=1e-6."""
    regular = (base - 1e-6) * (1 - i / max_iters) ** 0.9 + 1e-6
    if i >= 1500:
        return regular
    k = (1 - i / 1500) * (1 - 1e-6)
    return regular * (1 - k)


@pytest.mark.parametrize('iters', [10, 20, 40, 80])
def test_schedule_gives_the_authors_learning_rate(iters):
    """The configured schedulers, built and stepped by mmengine, give the
    authors' lr at every iteration, for the x1 and x10 groups."""
    import mmseg_ovss  # noqa: F401
    import torch
    from mmseg.registry import PARAM_SCHEDULERS
    init_default_scope('mmseg')
    cfg = load(f'configs/_base_/schedules/zegclip_{iters}k.py')
    max_iters = cfg.train_cfg.max_iters
    assert max_iters == iters * 1000
    groups = [dict(params=[torch.nn.Parameter(torch.zeros(1))], lr=lr)
              for lr in (2e-5, 2e-4)]
    optimizer = torch.optim.AdamW(groups, lr=2e-5)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer))
                  for s in cfg.param_scheduler]
    checked = {0, 1, 750, 1499, 1500, 1501, max_iters // 2,
               max_iters - 1000, max_iters - 1}
    for i in range(max_iters):
        if i in checked:
            for group in optimizer.param_groups:
                expected = _authors_lr(group['initial_lr'], i, max_iters)
                assert group['lr'] == pytest.approx(expected, rel=1e-9), i
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()


def test_epoch_based_schedule_converts_to_iterations():
    """convert_to_iter_based=True (mmengine's Runner calls
    build_iter_from_epoch): begin, end and warmup_iters in epochs, stepped
    per iteration, give the same rule over the iterations."""
    import mmseg_ovss  # noqa: F401
    import torch
    from mmseg.registry import PARAM_SCHEDULERS
    from mmseg_ovss.engine.schedulers import warmup_poly_lr
    init_default_scope('mmseg')
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = PARAM_SCHEDULERS.get('WarmupPolyLR').build_iter_from_epoch(
        optimizer, power=0.9, eta_min=1e-6, warmup_iters=2,
        warmup_ratio=1e-6, begin=0, end=5, by_epoch=True, epoch_length=10)
    assert not scheduler.by_epoch and scheduler.end == 50
    for step in range(50):
        assert optimizer.param_groups[0]['lr'] == pytest.approx(
            warmup_poly_lr(0.1, step, 50, 0.9, 1e-6, 20, 1e-6), rel=1e-12)
        optimizer.step()
        scheduler.step()
    with pytest.raises(OVSSConfigError, match='epoch_length'):
        PARAM_SCHEDULERS.get('WarmupPolyLR').build_iter_from_epoch(
            optimizer, end=5, by_epoch=True, epoch_length=None)


def test_pc60_split_is_pc59_unseen_with_background_seen():
    pc60 = json.loads((ROOT / 'data/splits/pc60_50_10.json').read_text())
    pc59 = json.loads((ROOT / 'data/splits/pc59_49_10.json').read_text())
    assert pc60['num_classes'] == 60
    assert len(pc60['seen_ids']) == 50 and len(pc60['unseen_ids']) == 10
    assert pc60['unseen_names'] == pc59['unseen_names']
    assert 0 in pc60['seen_ids'] and pc60['seen_names'][0] == 'background'
    import mmseg_ovss  # noqa: F401
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    classes = DATASETS.get('PascalContext60Dataset').METAINFO['classes']
    for ids, names in ((pc60['seen_ids'], pc60['seen_names']),
                       (pc60['unseen_ids'], pc60['unseen_names'])):
        assert [classes[i] for i in ids] == names


@pytest.mark.parametrize('target,dataset', [
    ('pc60', 'PascalContext60Dataset'), ('pc59', 'PascalContext59Dataset')])
def test_cross_dataset_configs_test_context(target, dataset):
    for method in ('cliprc', 'zegclip'):
        cfg = load(f'configs/{method}/'
                   f'vit-b16_coco-stuff-156-15_inductive_to_{target}.py')
        assert cfg.test_dataloader.dataset.type == dataset
        assert cfg.test_evaluator.type == 'OVSSIoUMetric'
        assert 'split' not in cfg.test_evaluator
        # trained as the COCO-Stuff inductive model
        assert cfg.train_dataloader.dataset.type == 'COCOStuff171Dataset'
        assert cfg.model.backbone.prompts.num_tokens == 100


@pytest.mark.parametrize('rel,path,value', [
    ('rlb_tokens-1.py', ('region_bridge', 'num_tokens'), 1),
    ('rlb_tokens-256.py', ('region_bridge', 'num_tokens'), 256),
    ('rlb_tokens-16_updated.py', ('region_bridge', 'update'), True),
    ('ram_cls.py', ('decode_head', 'region_alignment', 'use_rlb'), False),
    ('ram_none.py', ('decode_head', 'region_alignment', 'use_cls'), False),
    ('recovery_kd.py', ('decode_head', 'recovery', 'loss'), 'kd'),
    ('recovery_layers-0.py', ('decode_head', 'recovery', 'num_layers'), 0),
    ('components_rlb.py', ('decode_head', 'recovery'), None),
    ('components_rlb_ram.py', ('decode_head', 'recovery'), None),
])
def test_ablation_differs_from_the_main_config_in_one_place(rel, path,
                                                           value):
    cfg = load(f'configs/cliprc/ablations/{rel}').model
    main = load('configs/cliprc/vit-b16_voc-15-5_inductive.py').model
    node, ref = cfg, main
    for key in path[:-1]:
        node, ref = node[key], ref[key]
    assert node[path[-1]] == value != ref[path[-1]]
