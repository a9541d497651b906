"""FreeCP stage visualisation: the recorded composition is the method (its
final map is the segmentor's own prediction), its records agree with the
paper's formulas computed directly, and tools/freecp_visualize.py writes
the images and summary end to end on a tiny random CLIP."""
import json

import cv2
import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_ovss  # noqa: F401
from mmseg_ovss.testing.tiny_clip import register_tiny_clip_models
from mmseg_ovss.testing.tools import run_tool
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError
from mmseg_ovss.visualization.freecp_stages import (RecordingFreeCPPipeline,
                                                    freecp_stages)
from mmseg_ovss.visualization.render import LEGEND_WIDTH

CLASSES = ['background', 'cat, kitten', 'dog', 'grass', 'car', 'tree']
# temperature 100 and low thresholds: random weights then give RP and AP
# something to decide
OPTIONS = dict(rp_threshold=0.05, ap_threshold=0.2, logit_scale=100.0)
SLIDE = dict(mode='slide', crop_size=(32, 48), stride=(16, 16))


def build(scope='window', test_cfg=SLIDE, **head):
    init_default_scope('mmseg')
    register_tiny_clip_models()
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='CLIPDenseSegmentor',
        clip=dict(model_name='ovss-tiny-ViT-16', random_init=True),
        backbone=dict(type='OpenCLIPViT',
                      dense_strategy=dict(type='SCLIP', residual=False)),
        text_encoder=dict(type='OpenCLIPTextEncoder', templates='single'),
        decode_head=dict(type='FreeCPHead', descriptions=None,
                         ap_text='templates', crop_size=32,
                         purification_scope=scope, **OPTIONS, **head),
        test_cfg=test_cfg)).eval()
    model.set_vocabulary(CLASSES)
    return model


def one_image(shape=(48, 64)):
    torch.manual_seed(3)
    inputs = torch.randn(1, 3, *shape)
    sample = SegDataSample(metainfo=dict(img_shape=shape, ori_shape=shape))
    return inputs, sample


@pytest.mark.parametrize('scope,test_cfg,elimination', [
    ('window', SLIDE, 'window'),
    ('window', SLIDE, 'local'),
    ('image', dict(mode='whole'), 'window')])
def test_recorded_stages_give_the_segmentors_prediction(scope, test_cfg,
                                                        elimination):
    model = build(scope, test_cfg, ap_elimination=elimination)
    inputs, sample = one_image()
    with torch.no_grad():
        plain = model.predict(inputs, [sample.clone()])[0]
    stages = freecp_stages(model, inputs, sample.clone())
    # the head's own pipeline is back in place
    assert not isinstance(model.decode_head.pipeline,
                          RecordingFreeCPPipeline)
    assert torch.equal(stages.labels, plain.pred_sem_seg.data[0])
    torch.testing.assert_close(stages.seg_logits, plain.seg_logits.data,
                               rtol=0, atol=0)
    # 48 x 64 px, 32 x 48 windows, stride 16: 2 rows x 2 columns
    assert [w.box for w in stages.windows] == (
        [(0, 32, 0, 48), (0, 32, 16, 64), (16, 48, 0, 48), (16, 48, 16, 64)]
        if scope == 'window' else [(0, 48, 0, 64)])
    dropped = [not bool(k) for w in stages.windows for k in w.keep]
    assert any(dropped) and not all(dropped)  # purification acted


def half_dice(x, y):
    """The authors' RP score sum(xy) / (sum x + sum y), by explicit sums."""
    return float((x * y).sum() / (x.sum() + y.sum() + 1e-8))


def soft_iou(x, y):
    return float(np.minimum(x, y).sum() / (np.maximum(x, y).sum() + 1e-8))


def test_records_agree_with_the_equations_computed_directly():
    model = build()
    inputs, sample = one_image()
    stages = freecp_stages(model, inputs, sample)
    eps = torch.finfo(torch.float32).eps
    groups_seen = 0
    for window in stages.windows:
        cams, refined = window.cams.double().numpy(), \
            window.refined.double().numpy()
        n = cams[0].size
        for c in range(len(window.classes)):
            score = half_dice(cams[c], refined[c])  # Eq. 5 (authors' SC)
            assert float(window.rp_scores[c]) == pytest.approx(
                score, abs=8 * eps * np.sqrt(n))
            if abs(score - OPTIONS['rp_threshold']) > 1e-4:
                assert bool(window.keep_after_rp[c]) == (
                    score > OPTIONS['rp_threshold'])
        kept_rp = [c for c in range(len(window.classes))
                   if window.keep_after_rp[c]]
        for members in window.groups:
            groups_seen += 1
            assert len(members) >= 2 and set(members) <= set(kept_rp)
            # Eq. 7: every member is linked to another one of its group
            for m in members:
                assert any(soft_iou(refined[m], refined[o]) >=
                           OPTIONS['ap_threshold'] - 1e-4
                           for o in members if o != m)
        # 'window' elimination: a member that won no crop is dropped
        for g, members in enumerate(window.groups):
            crops = [c for c in window.crops if c[0] == g]
            if crops and not any(c[3] for c in crops):
                winners = {c[2] for c in crops if c[2] >= 0}
                assert {m for m in members if window.keep[m]} == winners
        # classes outside every group keep their RP decision
        grouped = {m for members in window.groups for m in members}
        for c in set(range(len(window.classes))) - grouped:
            assert bool(window.keep[c]) == bool(window.keep_after_rp[c])
    assert groups_seen > 0


@pytest.fixture(scope='module')
def tool_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp('freecp_vis')
    image = (np.random.RandomState(0).rand(48, 64, 3) * 255).astype(
        np.uint8)
    cv2.imwrite(str(folder / 'photo.png'), image)
    argv = ['configs/freecp/sclip_voc21.py', folder / 'photo.png',
            '--out-dir', folder / 'out', '--random-init', '--model-name',
            'ovss-tiny-ViT-16', '--classes', *CLASSES, '--short-side', '48',
            '--window', '0', '2', '--cfg-options',
            'model.text_encoder.templates=single',
            'model.decode_head.crop_size=32',
            'model.decode_head.rp_threshold=0.05',
            'model.decode_head.ap_threshold=0.2',
            'model.decode_head.logit_scale=100.0',
            'model.test_cfg.crop_size=[32,48]',
            'model.test_cfg.stride=[16,16]']
    return folder, argv, run_tool('freecp_visualize', argv)


def test_tool_writes_images_and_summary(tool_run):
    folder, _, summary = tool_run
    out = folder / 'out'
    assert json.loads((out / 'summary.json').read_text()) == json.loads(
        json.dumps(summary, default=str))
    assert summary['num_windows'] == 4 and summary['drawn_windows'] == [0, 2]
    for name in summary['files']:
        assert (out / name).is_file(), name
    drawn = {int(n.split('_')[0][len('window'):]) for n in summary['files']
             if n.startswith('window')}
    assert {f'image_{s}.png' for s in ('1_initial_cams', '2_refined',
                                       '5_purified')} <= set(summary['files'])
    assert drawn == {0, 2}
    final = cv2.imread(str(out / 'final_labels.png'))
    assert final.shape[1] == 64 + LEGEND_WIDTH and final.shape[0] >= 48
    foreground = [n.split(',')[0] for n in CLASSES[1:]]
    for window in summary['windows']:
        assert window['classes'] == foreground
        for name, fate in window['fates'].items():
            assert (fate == 'kept') == (name in window['kept'])
            if fate == 'dropped (RP)':
                assert window['sc_scores'][name] <= 0.05
                assert name in window['dropped_by_rp']
        for group in window['ambiguity_groups']:
            assert set(group['kept']) <= set(group['members'])
    # one image per stage and group of the drawn windows
    for index in (0, 2):
        window = summary['windows'][index]
        expected = {f'window{index}_{s}.png' for s in (
            '1_initial_cams', '2_refined', '3_redundancy', '5_purified')}
        expected |= {f'window{index}_4_group{g}.png'
                     for g in range(len(window['ambiguity_groups']))}
        assert expected <= set(summary['files'])
        cams = cv2.imread(str(out / f'window{index}_1_initial_cams.png'))
        assert cams.shape[1] > LEGEND_WIDTH  # tiles + legend panel


def test_tool_summary_is_the_segmentors_prediction(tool_run):
    """The labels drawn are the plain prediction of the model the config
    (with the same options) builds."""
    from mmseg_ovss.visualization.models import (build_segmentor,
                                                 load_config, model_sample,
                                                 set_clip_weights)
    folder, argv, summary = tool_run
    options = dict(item.split('=', 1)
                   for item in argv[argv.index('--cfg-options') + 1:])
    options = {k: (json.loads(v) if v[0] in '[0123456789' else v)
               for k, v in options.items()}
    cfg = load_config(argv[0], options)
    set_clip_weights(cfg, 'ovss-tiny-ViT-16', random_init=True)
    model = build_segmentor(cfg)
    model.set_vocabulary(CLASSES)
    image = cv2.imread(str(folder / 'photo.png'))
    inputs, sample = model_sample(model, image, 48)
    with torch.no_grad():
        labels = model.predict(inputs, [sample])[0].pred_sem_seg.data[0]
    names = [n.split(',')[0] for n in CLASSES]
    values, counts = np.unique(labels.numpy(), return_counts=True)
    shares = {names[int(c)]: int(n) / labels.numel()
              for c, n in zip(values, counts)}
    assert summary['final_label_shares'] == pytest.approx(shares)
    assert len(shares) >= 2


def test_tool_errors(tool_run, tmp_path):
    folder, argv, _ = tool_run
    with pytest.raises(OVSSDataError, match='does not exist'):
        run_tool('freecp_visualize', [argv[0], tmp_path / 'none.png',
                                      *argv[2:]])
    with pytest.raises(OVSSConfigError, match='duplicate'):
        run_tool('freecp_visualize', [*argv[:2], '--out-dir', tmp_path,
                                      '--classes', 'cat', 'cat'])
    with pytest.raises(OVSSConfigError, match='not a FreeCP config'):
        run_tool('freecp_visualize', ['configs/_base_/models/clip_sclip.py',
                                      *argv[1:]])
    with pytest.raises(OVSSConfigError, match=r'--window 9 does not exist.*'
                       r'has 4 window\(s\)'):
        run_tool('freecp_visualize', [*argv[:argv.index('--window') + 1],
                                      '9', *argv[argv.index('2') + 1:],
                                      '--out-dir', tmp_path / 'fresh'])
    with pytest.raises(OVSSConfigError, match='--window x'):
        run_tool('freecp_visualize', [*argv[:2], '--out-dir', tmp_path,
                                      '--window', 'x'])


def test_tool_never_overwrites_its_input_image(tool_run, tmp_path):
    folder, argv, _ = tool_run
    image = tmp_path / 'final_labels.png'
    image.write_bytes((folder / 'photo.png').read_bytes())
    before = image.read_bytes()
    rest = argv[argv.index('--random-init'):]
    for extra in ([], ['--overwrite']):
        with pytest.raises(OVSSDataError, match=r'writing final_labels.png '
                           'would overwrite the input image'):
            run_tool('freecp_visualize', [argv[0], image, '--out-dir',
                                          tmp_path, *rest, *extra])
    assert image.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['final_labels.png']
    # an output name linked to the input is refused too
    from mmseg_ovss.visualization.freecp_render import earlier_run_files
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'window0_2_refined.png').symlink_to(folder / 'photo.png')
    with pytest.raises(OVSSDataError, match='input image'):
        earlier_run_files(out, folder / 'photo.png', overwrite=True)


def test_tool_replaces_an_earlier_run_only_with_overwrite(tool_run,
                                                          tmp_path):
    import shutil
    folder, argv, first = tool_run
    out = tmp_path / 'out'
    shutil.copytree(folder / 'out', out)
    (out / 'notes.txt').write_text('mine')
    argv = [*argv[:argv.index('--window') + 1], '1',
            *argv[argv.index('2') + 1:], '--out-dir', out]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OVSSDataError, match=r'holds the files of an earlier '
                       r'run.*--overwrite'):
        run_tool('freecp_visualize', argv)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    summary = run_tool('freecp_visualize', [*argv, '--overwrite'])
    assert summary['drawn_windows'] == [1]
    # exactly this run's files, and the file the tool did not write
    assert sorted(p.name for p in out.iterdir()) == sorted(
        summary['files'] + ['summary.json', 'notes.txt'])
    assert not any(n.startswith(('window0_', 'window2_'))
                   for n in summary['files'])
    assert set(first['files']) - set(summary['files'])
    assert (out / 'notes.txt').read_text() == 'mine'
    # a stage-named file that summary.json does not list is not removed
    (out / 'window7_1_initial_cams.png').write_bytes(b'not mine to delete')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OVSSDataError, match=r"\['window7_1_initial_cams.png"
                       r"'\].*does not list them"):
        run_tool('freecp_visualize', [*argv, '--overwrite'])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_group_image_draws_at_most_max_crop_tiles(tmp_path):
    from mmseg_ovss.visualization.freecp_render import (MAX_CROP_TILES,
                                                        write_window)
    from mmseg_ovss.visualization.freecp_stages import WindowStages
    from mmseg_ovss.visualization.render import TILE_SIDE, TITLE_HEIGHT
    maps = torch.rand(2, 4, 4)
    crops = [(0, (0, 0, 2, 2), i % 2, False) for i in range(30)]
    crops += [(0, (1, 1, 1, 3), -1, True)]  # degenerate: never drawn
    window = WindowStages(
        index=0, box=(0, 64, 0, 64), classes=[1, 2], image=None,
        patch_size=16, cams=maps, refined=maps, purified=maps,
        rp_scores=torch.tensor([0.3, 0.2]),
        keep_after_rp=torch.tensor([True, True]),
        keep=torch.tensor([True, True]), groups=[[0, 1]], crops=crops)
    image = np.full((64, 64, 3), 128, np.uint8)
    files = write_window(window, image, ['bg', 'cat', 'dog'],
                         np.full((3, 3), 50, np.uint8), tmp_path)
    assert 'window0_4_group0.png' in files
    grid = cv2.imread(str(tmp_path / 'window0_4_group0.png'))
    # the boxes image + 24 crops + 2 members, 4 per row; bordered cells
    tiles = 1 + MAX_CROP_TILES + 2
    cell = TILE_SIDE + 6 + TITLE_HEIGHT
    rows = -(-tiles // 4)
    assert grid.shape[0] == rows * cell + (rows - 1) * 4
    assert grid.shape[1] == 4 * (TILE_SIDE + 6) + 3 * 4 + LEGEND_WIDTH


def test_palette_is_the_datasets_when_the_vocabulary_is_its_classes():
    from mmengine.config import Config
    from mmseg.datasets import PascalVOCDataset
    from mmseg_ovss.visualization.render import class_palette, golden_palette
    cfg = Config.fromfile('configs/freecp/sclip_voc21.py')
    meta = PascalVOCDataset.METAINFO
    names = [c.upper() for c in meta['classes']]  # case does not matter
    palette = class_palette(names, cfg)
    assert np.array_equal(palette[:, ::-1], np.asarray(meta['palette']))
    other = ['cat'] + list(meta['classes'][1:])
    assert np.array_equal(class_palette(other, cfg),
                          golden_palette(len(other)))
    assert np.array_equal(class_palette(names[:3], cfg), golden_palette(3))
