"""tools/benchmark.py reports latency, throughput, memory and stages."""
from mmseg_ovss.testing.tools import run_tool


def test_benchmark_reports_stages(repo_root, tmp_path):
    config = repo_root / 'configs' / 'baselines' / 'naclip_ade.py'
    out = tmp_path / 'bench.json'
    result = run_tool('benchmark', [
        config, '--random-init', '--model-name', 'ovss-tiny-ViT-16',
        '--num-images', '2', '--warmup', '0', '--short-side', '32',
        '--num-classes', '7', '--device', 'cpu', '--json', out])
    assert out.is_file()
    assert result['num_classes'] == 7 and result['image_size'] == [32, 43]
    assert result['images_per_s'] > 0 and result['cpu_peak_rss_mb'] > 0
    stages = result['stages_s_per_image']
    assert {'backbone', 'head', 'postprocess'} <= set(stages)
    assert sum(stages.values()) <= result['latency_s_mean'] * 1.05


def test_random_init_is_seeded(repo_root):
    """Base and FreeCP configs are timed on the same random CLIP weights."""
    from mmseg_ovss.testing.tools import load_tool
    tool = load_tool('benchmark')
    weights = []
    for name in ('benchmark/sclip_ade_base', 'sclip_ade'):
        args = tool.parse_args([
            str(repo_root / 'configs' / 'freecp' / f'{name}.py'),
            '--random-init', '--model-name', 'ovss-tiny-ViT-16',
            '--device', 'cpu', '--seed', '3'])
        _, model = tool.build_model(args)
        weights.append(model.state_dict())
    shared = weights[0].keys() & weights[1].keys()
    assert any('visual' in key for key in shared)
    for key in shared:
        assert (weights[0][key] == weights[1][key]).all(), key


def test_benchmark_against_a_baseline(repo_root):
    """--baseline times a second config on the same images, alternately,
    and reports the time ratio."""
    freecp = repo_root / 'configs' / 'freecp'
    result = run_tool('benchmark', [
        freecp / 'sclip_ade.py', '--baseline',
        freecp / 'benchmark' / 'sclip_ade_base.py', '--random-init',
        '--model-name', 'ovss-tiny-ViT-16', '--num-images', '3',
        '--warmup', '1', '--short-side', '32', '--num-classes', '6',
        '--templates', 'single', '--device', 'cpu'])
    base = result['baseline']
    assert base['config'].endswith('sclip_ade_base.py')
    assert len(result['latencies_s']) == len(base['latencies_s']) == 3
    ratio = result['ratio']
    assert ratio['of_means'] == result['latency_s_mean'] / \
        base['latency_s_mean']
    assert ratio['per_image'] == [a / b for a, b in zip(
        result['latencies_s'], base['latencies_s'])]
    assert 'head' in result['stages_s_per_image']
    assert 'head' in base['stages_s_per_image']


def test_size_and_background_options(repo_root):
    """--size WxH sets the generated images' size, --background adds a
    background class in front of the --num-classes names."""
    import pytest
    from mmseg_ovss.testing.tools import load_tool
    config = repo_root / 'configs' / 'freecp' / 'sclip_city.py'
    result = run_tool('benchmark', [
        config, '--random-init', '--model-name', 'ovss-tiny-ViT-16',
        '--num-images', '1', '--warmup', '0', '--size', '40x24',
        '--num-classes', '5', '--background', '--templates', 'single',
        '--device', 'cpu'])
    assert result['image_size'] == [24, 40]
    assert result['num_classes'] == 6 and result['background'] is True
    tool = load_tool('benchmark')
    assert tool.parse_args(['c.py', '--size', '2048x1024']).size == \
        (1024, 2048)
    for bad in ('2048', '0x10', 'axb'):
        with pytest.raises(SystemExit):
            tool.parse_args(['c.py', '--size', bad])


def test_train_mode_stores_gradients_only_for_trainable_weights(repo_root):
    """--train on a training-free CLIP config trains its image backbone:
    with deep visual prompts on the frozen tower, the gradients are the
    prompts' (no frozen weight gets one); with --freeze none, every weight
    of the tower has one."""
    from mmseg_ovss.clip.loading import build_clip_model
    from mmseg_ovss.testing.tiny_clip import register_tiny_clip_models
    config = repo_root / 'configs' / 'baselines' / 'sclip_voc21.py'
    common = [config, '--random-init', '--model-name', 'ovss-tiny-ViT-16',
              '--train', '--size', '64x64', '--batch-size', '1',
              '--num-images', '1', '--warmup', '0', '--device', 'cpu']
    prompted = run_tool('benchmark', [*common, '--prompts', '2'])
    assert prompted['mode'] == 'train' and prompted['trained'] == 'backbone'
    assert prompted['freeze'] == 'all'
    assert prompted['frozen_params_with_grad'] == 0
    # DeepVisualPrompts(num_tokens=2), one set per block (depth None) of
    # the tiny ViT-16 (6 blocks, width 64), one shared Linear(64, 64)
    depth, tokens, width = 6, 2, 64
    prompt_params = depth * tokens * width + width * width + width
    float32 = 4
    assert prompted['grad_mb'] * 2**20 == prompt_params * float32
    assert round(prompted['params_trainable_m'] * 1e6) == prompt_params

    register_tiny_clip_models()
    visual = build_clip_model('ovss-tiny-ViT-16', random_init=True).visual
    tower_bytes = sum(p.numel() * p.element_size()
                      for p in visual.parameters())
    full = run_tool('benchmark', [*common, '--freeze', 'none'])
    assert full['freeze'] == 'none'
    assert full['frozen_params_with_grad'] == 0
    assert full['grad_mb'] * 2**20 == tower_bytes
    assert round(full['params_total_m'] * 1e6) == \
        sum(p.numel() for p in visual.parameters())


def test_train_mode_on_trainable_configs_with_ratios(tmp_path):
    """--train --configs A B on trainable configs: the config's own
    optim_wrapper, mixed precision, the stages and modules of a step, and
    the ratios of B to A. A and B differ in the head's width only."""
    from mmseg_ovss.testing.tiny_configs import tiny_segformer_config
    base = tmp_path / 'tiny_a.py'
    base.write_text(tiny_segformer_config(
        'voc21', 21, "dict(type='LoadCheckedAnnotations')", train_iters=2,
        crop=32))
    wider = tmp_path / 'tiny_b.py'
    wider.write_text(f"_base_ = ['{base.as_posix()}']\n"
                     "model = dict(decode_head=dict(channels=16))\n")
    result = run_tool('benchmark', [
        '--train', '--configs', base, wider, '--crop-size', '32',
        '--batch-size', '2', '--num-images', '2', '--warmup', '1',
        '--device', 'cpu', '--amp'])
    assert result['mode'] == 'train' and result['trained'] == 'model'
    assert result['optimizer'] == 'config optim_wrapper ' \
        'OVSSAmpOptimWrapper/AdamW'
    assert 'bfloat16' in result['amp']
    assert result['num_classes'] == 21 and result['frozen_params_with_grad'] \
        == 0
    stages = result['stages_s_per_step']
    assert {'preprocess', 'forward', 'backward', 'optimizer'} <= set(stages)
    assert sum(stages.values()) <= result['step_s_mean'] * 1.05
    modules = result['modules_s_per_step']
    assert {'backbone', 'decode_head'} <= set(modules)
    assert modules['backbone'] + modules['decode_head'] <= stages['forward']
    (other, ) = result['compared']
    assert other['config'] == str(wider)
    assert other['params_total_m'] > result['params_total_m']
    ratio = other['ratio_to_first']
    assert ratio['of_means'] == other['step_s_mean'] / result['step_s_mean']
    assert len(ratio['per_step']) == 2


def test_stage_flops_are_charged_to_the_running_stage():
    """StageFlopCounter charges each product to the profiler's outermost
    stage (nested stages go to it, as their seconds do) and the rest to
    '(outside stages)'; the counts are the hand counts of the shapes (one
    multiply-add = 1), including the CPU attention kernel."""
    import torch
    import torch.nn.functional as F
    from mmseg_ovss.engine.complexity import UNSTAGED, StageFlopCounter
    from mmseg_ovss.utils.profiler import StageProfiler, profile_stage
    x, w = torch.rand(5, 7), torch.rand(3, 7)
    q, k, v = torch.rand(2, 4, 9, 8), torch.rand(2, 4, 6, 8), \
        torch.rand(2, 4, 6, 5)
    profiler = StageProfiler()
    with torch.no_grad(), profiler, StageFlopCounter(profiler) as flops:
        with profile_stage('backbone'):
            F.linear(x, w)
            with profile_stage('inner'):
                torch.einsum('ij,kj->ik', x, w)
        with profile_stage('head'):
            F.scaled_dot_product_attention(q, k, v)
        torch.mm(x, w.t())
    linear = 5 * 7 * 3
    attention = 2 * 4 * 9 * 6 * (8 + 5)  # batch x heads x L x S x (E + Ev)
    assert flops.stages == {'backbone': 2 * linear, 'head': attention,
                            UNSTAGED: linear}
    assert flops.total == 3 * linear + attention


def test_matmul_rate_is_measured():
    """The rate of F.linear at a given shape: positive, the fastest of the
    timings (not slower than their median), and consistent with the time
    of one product in the multiply-add convention."""
    import math

    import torch
    from mmseg_ovss.engine.complexity import measure_matmul_rate
    for dtype in (torch.float32, torch.bfloat16):
        rate = measure_matmul_rate(dtype, (48, 32, 64), repeats=3,
                                   min_seconds=0.005)
        assert rate['dtype'] == str(dtype).split('.')[-1]
        assert rate['shape'] == [48, 32, 64]
        assert rate['threads'] == torch.get_num_threads()
        assert math.isfinite(rate['gflop_per_s']) and rate['gflop_per_s'] > 0
        assert rate['gflop_per_s'] >= rate['gflop_per_s_median']
        assert math.isclose(rate['gflop_per_s'] * 1e9 *
                            rate['seconds_per_product'], 48 * 32 * 64,
                            rel_tol=1e-9)
    import pytest
    with pytest.raises(ValueError, match='repeats'):
        measure_matmul_rate(torch.float32, (4, 4, 4), repeats=0)


def test_benchmark_reports_flops_and_matmul_fraction(repo_root):
    """GFLOPs per stage add up to the image's; GFLOP/s and the fraction of
    the measured matmul rate follow from the reported numbers."""
    import math
    config = repo_root / 'configs' / 'baselines' / 'maskclip_ade.py'
    result = run_tool('benchmark', [
        config, '--random-init', '--model-name', 'ovss-tiny-ViT-16',
        '--num-images', '1', '--warmup', '0', '--size', '32x32',
        '--num-classes', '5', '--templates', 'single', '--device', 'cpu',
        '--precision', 'fp32', '--matmul-shape', '32', '32', '32',
        '--matmul-repeats', '2'])
    stages = result['stages_gflops_per_image']
    assert math.isclose(sum(stages.values()), result['gflops_per_image'],
                        rel_tol=1e-12)
    assert stages['backbone'] > 0 and result['flops_counted_images'] == 1
    rate = result['matmul_rate']['float32']['gflop_per_s']
    assert result['run_dtype'] == 'float32'
    assert result['matmul_rate_gflop_per_s'] == rate
    assert set(result['matmul_rate']) >= {'float32', 'bfloat16'}
    seconds = result['stages_s_per_image']
    for name, per_s in result['stages_gflop_per_s'].items():
        assert math.isclose(per_s, stages[name] / seconds[name])
        assert math.isclose(result['stages_matmul_fraction'][name],
                            per_s / rate)
    assert math.isclose(result['matmul_fraction'],
                        result['gflops_per_image'] /
                        result['latency_s_mean'] / rate)
    assert 'multiply-add = 1' in result['flop_convention']


def test_authors_code_driver_exports_the_seeded_random_clip(repo_root,
                                                          tmp_path):
    """tools/dev/authors_code/side_by_side.py's weight export: the
    exported OpenAI-layout state dict is the package's seeded
    random CLIP: it loads strictly into a fresh build of the architecture
    and equals the model built with the same seed, tensor for tensor."""
    import importlib.util

    import torch
    from mmseg_ovss.clip.loading import build_clip_model
    from mmseg_ovss.testing.tiny_clip import register_tiny_clip_models
    register_tiny_clip_models()
    path = repo_root / 'tools' / 'dev' / 'authors_code' / 'side_by_side.py'
    spec = importlib.util.spec_from_file_location('side_by_side', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tool.export_openai_weights('ovss-tiny-ViT-16', 5,
                                     str(tmp_path / 'clip.pt'))
    state = torch.load(out, weights_only=True)
    reference = build_clip_model('ovss-tiny-ViT-16', random_init=True,
                                 seed=5)
    fresh = build_clip_model('ovss-tiny-ViT-16', random_init=True, seed=6)
    fresh.load_state_dict(state, strict=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key
    assert 'visual.proj' in state and 'text_projection' in state


def _authors_code_module(repo_root, name):
    """A module of tools/dev/authors_code (not a package)."""
    import importlib.util
    path = repo_root / 'tools' / 'dev' / 'authors_code' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(f'authors_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_authors_code_patches_are_undone(repo_root):
    """freecp_authors.patched_attributes sets attributes for a block and
    puts back each one as it was: an own attribute gets its object back,
    an inherited one is removed again (the class's parent answers), also
    when the block raises."""
    import types

    import pytest
    tool = _authors_code_module(repo_root, 'freecp_authors')

    class Parent:
        def inherited(self):
            return 'parent'

    class Child(Parent):
        def own(self):
            return 'own'

    own = vars(Child)['own']
    module = types.ModuleType('probe')
    module.loader = len
    with pytest.raises(KeyError):
        with tool.patched_attributes(Child, own=lambda s: 'patched',
                                     inherited=lambda s: 'patched'), \
                tool.patched_attributes(module, loader=max):
            assert Child().own() == Child().inherited() == 'patched'
            assert module.loader is max
            raise KeyError('inside')
    assert vars(Child)['own'] is own and 'inherited' not in vars(Child)
    assert Child().inherited() == 'parent' and module.loader is len


def test_authors_code_module_swap(repo_root):
    """freecp_authors.swapped_modules: within the block sys.modules holds
    the stored modules of the package (none at first), on exit the store
    keeps those loaded within and the earlier ones are back."""
    import sys
    import types
    tool = _authors_code_module(repo_root, 'freecp_authors')
    ours = {name: types.ModuleType(name)
            for name in ('ovss_swap_probe', 'ovss_swap_probe.sub')}
    other = types.ModuleType('ovss_swap_probe_other')  # not in the package
    sys.modules.update(ours, ovss_swap_probe_other=other)
    store = {}
    try:
        with tool.swapped_modules(('ovss_swap_probe', ), store):
            assert 'ovss_swap_probe' not in sys.modules
            assert 'ovss_swap_probe.sub' not in sys.modules
            assert sys.modules['ovss_swap_probe_other'] is other
            theirs = types.ModuleType('ovss_swap_probe')
            sys.modules['ovss_swap_probe'] = theirs
        assert store == {'ovss_swap_probe': theirs}
        assert all(sys.modules[n] is m for n, m in ours.items())
        with tool.swapped_modules(('ovss_swap_probe', ), store):
            assert sys.modules['ovss_swap_probe'] is theirs
            assert 'ovss_swap_probe.sub' not in sys.modules
        assert sys.modules['ovss_swap_probe'] is ours['ovss_swap_probe']
    finally:
        for name in (*ours, 'ovss_swap_probe_other'):
            sys.modules.pop(name, None)


def test_authors_code_gets_our_descriptions(repo_root, tmp_path):
    """The description table given to the FreeCP authors' get_prompts:
    per name, the sentences of our description file that our head matches
    (names compared ignoring case and punctuation; a repeated sentence
    kept, as their code averages every copy); a name without sentences is
    refused, since their code would fail on it."""
    import json

    import pytest
    tool = _authors_code_module(repo_root, 'freecp_authors')
    path = tmp_path / 'desc.json'
    path.write_text(json.dumps({
        'Chest-of-Drawers': ['A chest.', 'Drawers.', 'A chest.'],
        'sky': ['The sky is blue.'],
        'unused': ['Not asked for.']}))
    table = tool.authors_description_table(str(path),
                                           ['sky', 'chest of drawers'])
    assert table == {'sky': ['The sky is blue.'],
                     'chest of drawers': ['A chest.', 'Drawers.', 'A chest.']}
    deduplicated = tool.authors_description_table(
        dict(path=str(path), deduplicate=True), ['chest of drawers'])
    assert deduplicated == {'chest of drawers': ['A chest.', 'Drawers.']}
    with pytest.raises(SystemExit, match="'wall'"):
        tool.authors_description_table(str(path), ['sky', 'wall'])


def test_authors_code_label_file_and_thresholds(repo_root, tmp_path):
    """The FreeCP driver's files: an all-zero label PNG of the image's size
    where the authors' predict looks for an ADE image's ground truth
    (images -> annotations, jpg -> png), and a config inheriting ours with
    the thresholds replaced and everything else kept."""
    import numpy as np
    from mmengine.config import Config
    from PIL import Image
    tool = _authors_code_module(repo_root, 'freecp_authors')
    image_path = tool.write_label_png(str(tmp_path), 3, 20, 30)
    assert image_path == str(tmp_path / 'images' / '3.jpg')
    label = np.array(Image.open(tmp_path / 'annotations' / '3.png'))
    assert label.shape == (20, 30) and label.dtype == np.uint8
    assert not label.any()
    base = repo_root / 'configs' / 'freecp' / 'gem_ade.py'
    cfg = Config.fromfile(tool.threshold_config(
        str(base), str(tmp_path / 'cfg.py'), rp_threshold=-1,
        ap_threshold=0.8))
    head = cfg.model.decode_head
    assert (head.rp_threshold, head.ap_threshold) == (-1.0, 0.8)
    original = Config.fromfile(str(base))
    assert head.descriptions == original.model.decode_head.descriptions
    assert cfg.model.test_cfg == original.model.test_cfg
    kept = Config.fromfile(tool.threshold_config(
        str(base), str(tmp_path / 'cfg2.py'), ap_threshold=0.9))
    assert kept.model.decode_head.rp_threshold == \
        original.model.decode_head.rp_threshold


def test_authors_code_bpe_redirect(repo_root, tmp_path):
    """freecp_authors.redirected_gzip: opening the missing file opens the
    present one; other files and an existing file are left alone."""
    import gzip
    tool = _authors_code_module(repo_root, 'freecp_authors')
    present, other = tmp_path / 'present.gz', tmp_path / 'other.gz'
    for path, text in ((present, b'vocabulary'), (other, b'other')):
        with gzip.open(path, 'wb') as f:
            f.write(text)
    missing = tmp_path / 'clone' / 'vocab.gz'
    original = gzip.open
    with tool.redirected_gzip(str(missing), str(present)):
        assert gzip.open(str(missing)).read() == b'vocabulary'
        assert gzip.open(other).read() == b'other'
    assert gzip.open is original
    with tool.redirected_gzip(str(other), str(present)):
        assert gzip.open(other).read() == b'other'


def test_authors_code_counts_our_crops(repo_root, monkeypatch):
    """counting_our_crops adds the boxes of each ambiguity purification and
    those a crop gave a winner (-1: degenerate or not needed)."""
    import torch
    import mmseg_ovss.freecp.pipeline as pipeline
    from mmseg_ovss.freecp.purification import CropVotes
    tool = _authors_code_module(repo_root, 'freecp_authors')
    votes = CropVotes(group=torch.tensor([0, 0, 1, 1, 1]),
                      boxes=torch.zeros(5, 4, dtype=torch.long),
                      degenerate=torch.tensor([False, True, False, False,
                                               False]),
                      winner=torch.tensor([2, -1, 4, -1, 5]))
    monkeypatch.setattr(pipeline, 'classify_group_crops',
                        lambda *a, **k: votes)
    counts = dict(boxes=0, classified=0)
    with tool.counting_our_crops(counts):
        assert pipeline.classify_group_crops() is votes
        pipeline.classify_group_crops()
    assert counts == dict(boxes=10, classified=6)
    assert pipeline.classify_group_crops() is votes  # unwrapped again


def test_authors_code_driver_reads_photos_as_the_test_pipeline(repo_root,
                                                               tmp_path):
    """side_by_side.load_images sizes --images by the config's keep-ratio
    Resize through benchmark.read_image: a 100x40 photo fits the SCLIP ADE
    test scale (2048, 448) with factor 448 / 40."""
    import numpy as np
    from mmengine.config import Config
    from PIL import Image

    from mmseg_ovss.testing.tools import load_tool
    bench = load_tool('benchmark')
    side_by_side = _authors_code_module(repo_root, 'side_by_side')
    path = tmp_path / 'wide.jpg'
    Image.fromarray(np.full((40, 100, 3), 90, np.uint8)).save(path)
    cfg = Config.fromfile(repo_root / 'configs' / 'baselines' /
                          'sclip_ade.py')
    scale = [s for s in cfg.test_pipeline if s['type'] == 'Resize'][0]
    long_side, short_side = max(scale['scale']), min(scale['scale'])
    factor = min(long_side / 100, short_side / 40)
    images = side_by_side.load_images(bench, [str(path)], cfg)
    assert tuple(images[0].shape) == (3, round(40 * factor),
                                      round(100 * factor))


def _one_model_in_both_roles(repo_root, num_images: int, **driver_args):
    """side_by_side.run_side_by_side with one tiny SCLIP as ours and as
    theirs, on ``num_images`` generated images (the first the warm-up)."""
    import argparse
    import contextlib

    from mmseg_ovss.testing.tools import load_tool
    bench = load_tool('benchmark')
    side_by_side = _authors_code_module(repo_root, 'side_by_side')
    config = str(repo_root / 'configs' / 'baselines' / 'sclip_ade.py')
    bargs = bench.parse_args([config, '--random-init', '--model-name',
                              'ovss-tiny-ViT-16', '--device', 'cpu',
                              '--templates', 'single', '--num-classes', '4'])
    _, model = bench.build_model(bargs)
    model.eval()
    theirs = argparse.Namespace(model=model, running=contextlib.nullcontext,
                                image_meta=lambda index, h, w: {})
    images = bench.make_images(num_images, 32, 48)
    metas = [side_by_side.image_meta(bench, theirs, i, image)
             for i, image in enumerate(images)]
    return side_by_side.run_side_by_side(
        argparse.Namespace(method='sclip', **driver_args), bench, model,
        theirs, images[:1], images[1:], metas)


def test_authors_code_driver_agrees_with_itself(repo_root):
    """side_by_side.run_side_by_side on one model in both roles: the
    labels of benchmark.run_one agree on every pixel (benchmark's
    label_agreement) and each side is timed once per image."""
    result = _one_model_in_both_roles(repo_root, 3)
    assert result['label_agreement'] == [1.0, 1.0]
    assert len(result['seconds']['ours']) == 2
    assert len(result['seconds']['theirs']) == 2
    assert result['labels_used']['ours'] == result['labels_used']['theirs']
    assert 'profile' not in result


def test_authors_code_driver_profiles_each_side(repo_root):
    """--profile K: each side's K operators of most self CPU time on one
    more run of the first timed image, most first, within the total, and
    not timed; a negative K is refused."""
    import pytest
    result = _one_model_in_both_roles(repo_root, 2, profile=4)
    assert len(result['seconds']['ours']) == 1  # the profile is untimed
    for who in ('ours', 'theirs'):
        profile = result['profile'][who]
        operators = profile['operators']
        assert len(operators) == 4
        seconds = [op['self_s'] for op in operators]
        assert seconds == sorted(seconds, reverse=True) and seconds[-1] > 0
        assert sum(seconds) <= profile['self_s_total']
        assert all(op['calls'] >= 1 for op in operators)
    side_by_side = _authors_code_module(repo_root, 'side_by_side')
    with pytest.raises(SystemExit):
        side_by_side.parse_args(['--repo', '.', '--profile', '-1'])


def test_details_count_crops_without_taking_time_from_stages():
    """profile_detail inside a stage records a breakdown (seconds, items)
    and leaves the stage's seconds whole; encode_unique_crops reports the
    crops asked and the distinct crops encoded."""
    import time

    import torch
    from mmseg_ovss.freecp.purification import encode_unique_crops
    from mmseg_ovss.utils.profiler import StageProfiler, profile_stage
    crops = torch.rand(3, 3, 4, 4)
    crops = torch.cat([crops, crops[:2]])  # 5 crops, 3 distinct
    encoded = []

    def encode(batch):
        time.sleep(0.02)
        encoded.append(len(batch))
        return batch.flatten(1)[:, :2]

    profiler = StageProfiler(cuda_sync=False)
    with profiler:
        with profile_stage('head'):
            out = encode_unique_crops(crops, encode)
            time.sleep(0.02)
        encode_unique_crops(crops[:1], encode)  # outside any stage
    assert encoded == [3, 1]
    assert torch.equal(out, crops.flatten(1)[:, :2])
    assert dict(profiler.detail_items) == {'crops_asked': 6,
                                           'crop_encoder': 4}
    assert profiler.detail_calls['crop_encoder'] == 2
    assert profiler.detail_seconds['crop_encoder'] >= 0.04
    # the stage keeps its own time: its crops plus the rest of it
    assert profiler.seconds['head'] >= 0.04
    assert profiler.detail_seconds['crop_encoder'] <= \
        profiler.seconds['head'] + profiler.detail_seconds['crop_encoder']
    profiler.reset()
    assert not profiler.detail_items and not profiler.detail_seconds
    # without an active profiler nothing is recorded
    encode_unique_crops(crops, encode)
    assert not profiler.detail_items


def test_benchmark_reports_the_crops_of_freecp(repo_root):
    """A FreeCP setting that forms ambiguity groups reports its crops per
    image (encoded, asked) and their encoder time inside the head."""
    config = repo_root / 'configs' / 'freecp' / 'benchmark' / \
        'sclip_ade_many_crops.py'
    result = run_tool('benchmark', [
        config, '--random-init', '--model-name', 'ovss-tiny-ViT-16',
        '--num-images', '1', '--warmup', '0', '--short-side', '128',
        '--num-classes', '6', '--templates', 'single', '--device', 'cpu'])
    items = result['details_items_per_image']
    assert 0 < items['crop_encoder'] <= items['crops_asked']
    seconds = result['details_s_per_image']['crop_encoder']
    assert 0 < seconds <= result['stages_s_per_image']['head']


def test_benchmark_records_templates_and_the_text_bank(repo_root, tmp_path):
    """The JSON names the config's templates (model.text_encoder) and how
    many of the vocabulary's prompts the text bank held before encoding:
    text_encoding_s of a warm bank is not that of a cold one."""
    config = repo_root / 'configs' / 'baselines' / 'naclip_ade.py'
    common = [config, '--random-init', '--model-name', 'ovss-tiny-ViT-16',
              '--num-images', '1', '--warmup', '0', '--short-side', '32',
              '--num-classes', '3', '--device', 'cpu', '--flops', 'none']
    bank = tmp_path / 'bank'
    cold = run_tool('benchmark', [*common, '--text-bank', bank])
    assert cold['templates'] == 'openai'
    prompts = 3 * 80
    assert cold['text_bank']['prompts'] == prompts
    assert cold['text_bank']['banked'] == 0
    assert cold['text_bank']['path'].startswith(str(bank))
    warm = run_tool('benchmark', [*common, '--text-bank', bank])
    assert warm['text_bank']['banked'] == prompts
    off = run_tool('benchmark', [*common, '--text-bank', 'off'])
    assert off['text_bank'] is None


def test_benchmark_refuses_bad_counts_and_size_with_images(capsys):
    import pytest
    from mmseg_ovss.testing.tools import load_tool
    tool = load_tool('benchmark')
    for argv, message in (
            (['--warmup', '-1'], '--warmup -1'),
            (['--num-classes', '0'], '--num-classes 0'),
            (['--images', 'x.jpg', '--size', '64x64'], '--size')):
        with pytest.raises(SystemExit):
            tool.parse_args(['c.py', *argv])
        assert message in capsys.readouterr().err
    assert tool.parse_args(['c.py', '--warmup', '0']).warmup == 0
