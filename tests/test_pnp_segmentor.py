"""PnP-OVSS segmentor end to end: mmseg model, tools/test.py, search tool.

The tools/test.py runs check values: their VOC20 dataset is planted
(``mmseg_ovss.testing.planted``), its ground truth the tiny BLIP model's own
prediction reached by a direct route, with a known corruption in the second
image, so the tool must report the metrics counted by hand.
"""
import json
import sys

import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmengine.structures import PixelData

import mmseg_ovss  # noqa: F401
from mmseg_ovss.testing.planted import (CORRUPTED, IGNORE, IGNORED,
                                        IMAGE_SIZE, encode_labels,
                                        expected_metrics, plant_ground_truth,
                                        planted_data_root,
                                        reported_tolerance, uncorrupted)
from mmseg_ovss.testing.tiny_blip import make_tiny_blip
from mmseg_ovss.testing.tools import load_tool, run_tool
from mmseg_ovss.utils.crf import crf_available
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

NAMES = ['cat', 'dog', 'tv monitor, monitor', 'potted plant']
PREPROCESSOR = dict(type='SegDataPreProcessor',
                    mean=[122.770938, 116.74601, 104.093735],
                    std=[68.500534, 66.632244, 70.323165],
                    bgr_to_rgb=True, pad_val=0, seg_pad_val=255)


@pytest.fixture(scope='module')
def blip_folder(tmp_path_factory):
    return make_tiny_blip(tmp_path_factory.mktemp('tiny_blip'))


def build(blip_folder, **kwargs):
    init_default_scope('mmseg')
    # The tiny random BLIP's class maps are all 0 at the paper's layer 8
    # (GradCAM keeps only positive gradients, none reach the class tokens
    # there); its first layer gives non-zero maps.
    cfg = dict(type='PnPOVSS', data_preprocessor=PREPROCESSOR,
               blip=dict(pretrained=blip_folder), class_names=NAMES,
               crf=None, cross_attention_layer=1)
    cfg.update(kwargs)
    return MODELS.build(cfg).eval()


def samples(num=1, shape=(40, 56), gt=None, path='/data/img_{}.jpg'):
    out = []
    for i in range(num):
        sample = SegDataSample(metainfo=dict(
            img_shape=shape, ori_shape=(30, 42), img_path=path.format(i)))
        if gt is not None:
            sample.gt_sem_seg = PixelData(data=gt[None])
        out.append(sample)
    return out


def _inputs(num=1, shape=(40, 56)):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(num, 3, *shape, generator=gen)


def test_predict_fills_labels_and_scores(blip_folder):
    model = build(blip_folder)
    with torch.no_grad():  # mmengine's test loop
        out = model.predict(_inputs(2), samples(2))
    for sample in out:
        labels = sample.pred_sem_seg.data
        assert labels.shape == (1, 30, 42)
        assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 255}
        assert sample.seg_logits.data.shape == (4, 30, 42)
    # the model's image encoder never kept gradients
    assert not any(p.requires_grad for p in model.parameters())
    # tools/benchmark.py sets its own vocabulary
    model.set_vocabulary(['sky', 'cat'])
    with torch.no_grad():
        out = model.predict(_inputs(1), samples(1))
    assert set(out[0].pred_sem_seg.data.unique().tolist()) <= {0, 1, 255}
    assert out[0].seg_logits.data.shape[0] == 2


def test_every_stage_can_be_switched_off(blip_folder):
    """Table 5 rows: attention only ... full pipeline."""
    inputs, gt = _inputs(), None
    rows = [
        dict(use_gradcam=False, salience_dropout=None, blur_sigma=None),
        dict(salience_dropout=None, blur_sigma=None),
        dict(salience_dropout=dict(iterations=2), blur_sigma=None),
        dict(blur_sigma=0.05),
        dict(threshold=None, blur_sigma=None),
        dict(salience_dropout=dict(schedule='top_k', iterations=3, top_k=4),
             threshold_mode='masked'),
        dict(background=False),
    ]
    for row in rows:
        model = build(blip_folder, **row)
        with torch.no_grad():
            out = model.predict(inputs, samples(1, gt=gt))
        assert out[0].pred_sem_seg.data.shape == (1, 30, 42)


@pytest.mark.skipif(not crf_available(),
                    reason='pydensecrf (pydensecrf2) not installed')
def test_dense_crf_stage(blip_folder):
    """Table 5's CRF rows (with and without the blur)."""
    for row in (dict(crf=dict(iterations=2)),
                dict(crf=dict(iterations=2), blur_sigma=None)):
        model = build(blip_folder, **row)
        with torch.no_grad():
            out = model.predict(_inputs(), samples(1))
        scores = out[0].seg_logits.data
        assert out[0].pred_sem_seg.data.shape == (1, 30, 42)
        assert torch.isfinite(scores).all()


def test_salience_matches_direct_dropout_loop(blip_folder):
    """The segmentor's drop loop: blanked patches are re-encoded."""
    model = build(blip_folder, salience_dropout=dict(iterations=2))
    pixels = model.to_patch_grid(_inputs())
    salience = model.class_salience(pixels, [0, 1])
    single = build(blip_folder, salience_dropout=None)
    first = single.class_salience(pixels, [0, 1])
    assert (first.flatten(2).amax(-1) > 0).all()  # every class has a map
    h, w = pixels.shape[-2] // 16, pixels.shape[-1] // 16
    u = first.sum(1).flatten()
    # Eq. 3 by rank: the half of the patches with the highest U goes
    # (ties, e.g. GradCAM's zeros, broken by patch index)
    order = np.argsort(-u.numpy(), kind='stable')
    keep = torch.ones(h * w, dtype=torch.bool)
    keep[torch.from_numpy(order[:(h * w + 1) // 2].copy())] = False
    mask = keep.view(1, 1, h, 1, w, 1).expand(1, 1, h, 16, w, 16)
    blanked = pixels * mask.reshape(1, 1, h * 16, w * 16)
    second = single.class_salience(blanked, [0, 1])
    expected = first + second * keep.view(1, 1, h, w)
    # fp32 maps through the tiny BLIP's text side: reductions over its
    # hidden size x layers (48 x 8) terms
    atol = 48 * 8 * torch.finfo(torch.float32).eps * expected.abs().max()
    torch.testing.assert_close(salience, expected, rtol=0, atol=atol)
    # the image encoder's backward on (authors' way) gives the same maps,
    # also inside a no-grad test loop
    model.image_encoder_grad = True
    with torch.no_grad():
        with_vit_grad = model.class_salience(pixels, [0, 1])
    torch.testing.assert_close(with_vit_grad, salience, rtol=0, atol=atol)


@pytest.mark.parametrize('row', [
    dict(salience_dropout=dict(iterations=3), blur_sigma=0.05),
    dict(use_gradcam=False, salience_dropout=dict(iterations=2),
         blur_sigma=None, threshold_mode='masked')])
def test_segment_stages_records_the_segmentors_own_maps(blip_folder, row):
    """PnPStages (Figs. 2-4): the same scores and labels as ``segment``,
    each pass's maps summing to the salience, Eq. 3's halving of the
    patches, the attention of pass 1 equal to the attention-only model's
    map, and the post-processing steps in order."""
    model = build(blip_folder, **row)
    image = _inputs()[0]

    def no_recording(*args):
        raise AssertionError('segment recorded a stage')
    model._record_pass = no_recording  # off: nothing is recorded
    with torch.no_grad():
        scores, labels = model.segment(image, [0, 1, 3], (30, 42))
    del model._record_pass
    with torch.no_grad():
        stages = model.segment_stages(image, [0, 1, 3], (30, 42))
    assert torch.equal(stages.scores, scores)
    assert torch.equal(stages.labels, labels)
    assert stages.channel_labels.tolist() == [255, 0, 1, 3]
    passes = row['salience_dropout']['iterations']
    assert len(stages.keeps) == len(stages.attention) == passes
    assert len(stages.gradcam) == (passes if model.use_gradcam else 0)
    h, w = stages.keeps[0].shape
    kept = [int(k.sum()) for k in stages.keeps]
    expected = [h * w]
    for _ in range(passes - 1):  # ceil(n / 2) of the n kept patches go
        expected.append(expected[-1] - (expected[-1] + 1) // 2)
    assert kept == expected
    summed = sum(m.double() for m in (stages.gradcam or stages.attention))
    atol = passes * torch.finfo(torch.float32).eps * summed.abs().max()
    torch.testing.assert_close(stages.salience.double(), summed, rtol=0,
                               atol=float(atol))
    for maps, keep in zip(stages.gradcam or stages.attention, stages.keeps):
        assert (maps[:, ~keep] == 0).all()  # dropped patches
    if model.use_gradcam:
        plain = build(blip_folder, use_gradcam=False, salience_dropout=None,
                      blur_sigma=None)
        pixels = plain.to_patch_grid(image[None])
        with torch.no_grad():
            attention = plain.class_salience(pixels, [0, 1, 3])[0]
        torch.testing.assert_close(stages.attention[0], attention)
    assert stages.normalized.shape == (3, h, w)
    assert stages.resized.shape == (4, 30, 42)  # + background channel
    assert (stages.blurred is not None) == bool(row['blur_sigma'])
    assert stages.crf is None


def test_background_index_and_excluded_class(blip_folder):
    names = ['sky, wall, tree'] + NAMES
    model = build(blip_folder, class_names=names, background_index=0)
    assert model.captioned_classes(samples(1)[0]) == [1, 2, 3, 4]
    with torch.no_grad():
        out = model.predict(_inputs(), samples(1))
    assert set(out[0].pred_sem_seg.data.unique().tolist()) <= {0, 1, 2, 3, 4}


def test_seg_logits_argmax_is_the_prediction_with_background_index(
        blip_folder):
    """COCO-Object: the background channel's score lands on its class."""
    # background last: an all-zero channel would argmax to class 0
    names = NAMES + ['sky, wall, tree']
    for row in (dict(blur_sigma=None), dict(blur_sigma=0.05),
                dict(threshold=None, blur_sigma=None)):
        model = build(blip_folder, class_names=names, background_index=4,
                      **row)
        with torch.no_grad():
            out = model.predict(_inputs(2), samples(2))
        for sample in out:
            logits = sample.seg_logits.data
            assert logits.shape == (5, 30, 42)
            assert torch.equal(logits.argmax(0), sample.pred_sem_seg.data[0])
    # the background index set: some pixels predicted background
    scores = torch.zeros(3, 2, 2)
    scores[0, 0] = 1  # background on the first row
    scores[1, 1, 0] = scores[2, 1, 1] = 1
    spread = model.vocabulary_scores(scores, [1, 3], 5, (2, 2))
    assert spread.argmax(0).tolist() == [[4, 4], [1, 3]]
    # no captioned class: everything is background
    empty = model.vocabulary_scores(scores[:0], [], 5, (2, 2))
    assert (empty.argmax(0) == 4).all()


def test_class_source_may_set_its_own_ignore_index(blip_folder):
    gt = torch.full((30, 42), 254, dtype=torch.long)
    gt[:10] = 1
    with pytest.warns(UserWarning, match='analysis only'):
        model = build(blip_folder, class_source=dict(
            type='oracle_ground_truth', ignore_index=254))
    assert model.class_source.ignore_index == 254
    assert model.captioned_classes(samples(1, gt=gt)[0]) == [1]
    with pytest.warns(UserWarning, match='analysis only'):
        model = build(blip_folder, ignore_index=254,
                      class_source=dict(type='oracle_ground_truth'))
    assert model.class_source.ignore_index == 254


def test_softmax_normalization_for_the_attention_only_row(blip_folder):
    """§3: raw attention normalised by softmax along the classes."""
    model = build(blip_folder, use_gradcam=False, salience_dropout=None,
                  normalization='softmax', threshold=None, blur_sigma=None,
                  background=False)
    salience = torch.rand(3, 2, 3) * 1e-3
    salience[1, 0, 0] = 1.0
    maps = model.postprocess_salience(salience, (2, 3))
    torch.testing.assert_close(maps.sum(0), torch.ones(2, 3))
    assert torch.equal(maps.argmax(0), salience.argmax(0))
    with torch.no_grad():
        out = model.predict(_inputs(), samples(1))
    assert set(out[0].pred_sem_seg.data.unique().tolist()) <= {0, 1, 2, 3}
    with pytest.raises(OVSSConfigError, match='threshold=None'):
        build(blip_folder, normalization='softmax')
    with pytest.raises(OVSSConfigError, match='normalization'):
        build(blip_folder, normalization='sigmoid')
    # --cfg-options model.crf=dict(iterations=2) arrives as a string
    with pytest.raises(OVSSConfigError, match='model.crf.iterations=2'):
        build(blip_folder, crf='dict(iterations=2)')


def test_class_sources(blip_folder, tmp_path):
    table = {'img_0': ['monitor', 0], 'img_1': ['cow']}
    path = tmp_path / 'classes.json'
    path.write_text(json.dumps(table))
    model = build(blip_folder, class_source=dict(type='json', path=str(path)))
    assert model.captioned_classes(samples(1)[0]) == [0, 2]
    with torch.no_grad():
        labels = model.predict(_inputs(), samples(1))[0].pred_sem_seg.data
    assert set(labels.unique().tolist()) <= {0, 2, 255}
    with pytest.raises(OVSSDataError, match='"cow" is not a class'):
        model.captioned_classes(samples(2)[1])
    with pytest.raises(OVSSDataError, match='no entry'):
        model.captioned_classes(samples(1, path='/x/other_{}.png')[0])
    gt = torch.full((30, 42), 255, dtype=torch.long)
    gt[:10] = 3
    gt[10:20] = 1
    with pytest.warns(UserWarning, match='analysis only'):
        oracle = build(blip_folder,
                       class_source=dict(type='oracle_ground_truth'))
    assert oracle.captioned_classes(samples(1, gt=gt)[0]) == [1, 3]


def test_bad_settings_are_rejected(blip_folder):
    with pytest.raises(OVSSConfigError, match='head 13'):
        build(blip_folder, cross_attention_head=13)
    with pytest.raises(OVSSConfigError, match='schedule'):
        build(blip_folder, salience_dropout=dict(schedule='all'))
    with pytest.raises(OVSSConfigError, match='max_caption_tokens'):
        build(blip_folder, max_caption_tokens=1000)
    with pytest.raises(OVSSConfigError, match='training-free'):
        build(blip_folder).loss(None, None)


def hide_pydensecrf(monkeypatch):
    """Make ``import pydensecrf`` fail as on a machine without it."""
    for name in ('pydensecrf', 'pydensecrf.densecrf', 'pydensecrf.utils'):
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_crf_is_a_clear_error(blip_folder, monkeypatch):
    """Runs with and without pydensecrf: its import is made to fail."""
    hide_pydensecrf(monkeypatch)
    with pytest.raises(OVSSConfigError, match='pydensecrf2'):
        build(blip_folder, crf=dict(iterations=10))


@pytest.mark.parametrize('name', ['voc20', 'pc59', 'object', 'stuff', 'ade'])
def test_config_vocabularies_match_their_datasets(repo_root, name):
    """Captions use the dataset's raw class names (VOC20: "boat",
    "diningtable", "tvmonitor", as the authors; not SCLIP's names)."""
    from mmengine.config import Config
    from mmseg.registry import DATASETS

    from mmseg_ovss.blip.vocabulary import read_synonyms
    init_default_scope('mmseg')
    cfg = Config.fromfile(f'{repo_root}/configs/pnp_ovss/blip_{name}.py')
    dataset = DATASETS.get(cfg.test_dataloader.dataset.type)
    classes = list(dataset.METAINFO['classes'])
    synonyms = read_synonyms(cfg.model.class_names,
                             cfg.model.get('shared_synonyms', 'error'))
    assert len(synonyms) == len(classes)
    first = [names[0] for names in synonyms]
    if name == 'voc20':
        assert cfg.model.class_names.endswith('pnp_voc20.txt')
        assert first == classes
        # SCLIP's names stay usable in per-image JSON class lists
        assert 'ship' in synonyms[3] and 'tv monitor' in synonyms[19]
    elif name != 'object':  # its row 0 is background's stuff words
        assert [n.strip() for n in first] == [c.strip() for c in classes]


def _voc20_config(tmp_path, repo_root, blip_folder, **model):
    model = dict(dict(blip=dict(pretrained=blip_folder)), **model)
    text = f"""
_base_ = ['{repo_root}/configs/pnp_ovss/blip_voc20.py']
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 48), keep_ratio=True),
    dict(type='LoadCheckedAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(num_workers=0, persistent_workers=False,
                       dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
model = {model!r}
"""
    path = tmp_path / 'pnp_voc20_tiny.py'
    path.write_text(text)
    return str(path)


@pytest.fixture(scope='module')
def voc20_root(tmp_path_factory):
    from mmseg_ovss.testing.tiny_datasets import (exported_data_root,
                                                  make_tiny_dataset)
    root = tmp_path_factory.mktemp('pnp_data')
    make_tiny_dataset('voc20', root)
    with exported_data_root(root):
        yield root


# Text layer 2 / head 1 of the tiny random BLIP give the planted images maps
# of many classes and some pixels left unlabelled (the "all classes off"
# background channel, which predicts the ignore index 255 on VOC20); at the
# paper's layer 8 every pixel is background, a degenerate check.
PLANTED_OPTIONS = ('model.cross_attention_layer=2',
                   'model.cross_attention_head=1')
UNLABELLED = 255  # VOC20's ignore index, predicted by the background channel


def _plant_voc20(tmp_path, cfg, corrupted=True):
    """Plant VOC20 for the tools/test.py run of ``cfg`` with
    ``PLANTED_OPTIONS`` (no checkpoint: the BLIP weights come from the
    config, as a user runs PnP-OVSS); (tool argv, planted data).

    No near-tie pixels are ignored (``tie_rtol``): the planting and the tool
    run the same fp32 operations in one process at batch size 1, and
    PnP-OVSS's threshold and Salience DropOut ranks make its labels
    discontinuous in the BLIP scores anyway, beyond what a tie mask on the
    final scores covers."""
    data_root = planted_data_root('voc20', tmp_path / 'data')
    argv = [str(cfg), '--work-dir', str(tmp_path / 'work'), '--cfg-options',
            *PLANTED_OPTIONS, f'test_dataloader.dataset.data_root={data_root}']
    tool = load_tool('test')
    planted = plant_ground_truth(tool.build_cfg(tool.parse_args(argv)),
                                 tmp_path / 'data', None, corrupted=corrupted)
    return argv, planted


def _assert_hand_count(metrics, planted):
    expected = planted.expected_metrics()
    tolerance = reported_tolerance(planted.num_classes)
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert abs(float(metrics[key]) - expected[key]) <= tolerance, (
            key, metrics, expected)


@pytest.mark.parametrize('crf', [
    None, pytest.param(dict(iterations=2), marks=pytest.mark.skipif(
        not crf_available(), reason='pydensecrf (pydensecrf2) not installed'))
], ids=['no_crf', 'crf'])
def test_tools_test_end_to_end_voc20(tmp_path, repo_root, blip_folder, crf):
    """tools/test.py reports the hand-counted metrics on planted VOC20
    labels: image 1 exact (its unlabelled pixels ignored), image 2 with a
    block of wrong labels, a block of ignored pixels and its unlabelled
    pixels labelled class 0 (``planted.UNLABELLED_TRUTH``). GradCAM runs
    inside the planting's no-grad predict as inside the tool's test loop."""
    cfg = _voc20_config(tmp_path, repo_root, blip_folder, crf=crf)
    argv, planted = _plant_voc20(tmp_path, cfg)
    metrics = run_tool('test', argv)
    first, second = planted.predictions
    # non-degenerate maps: several classes in each image, unlabelled pixels
    # in image 1 and in image 2 outside both blocks (misses the tool must
    # count)
    for prediction in planted.predictions:
        assert len(np.unique(prediction[prediction != UNLABELLED])) >= 2
    outside = np.ones(IMAGE_SIZE, dtype=bool)
    outside[CORRUPTED] = outside[IGNORED] = False
    unlabelled_first = int((first == UNLABELLED).sum())
    missed = int(((second == UNLABELLED) & outside).sum())
    assert unlabelled_first > 0 and missed > 0
    # aAcc counted directly: image 1's labelled pixels all right; image 2:
    # the 16 x 32 ignored block left out, the 16 x 32 corrupted block and
    # the missed pixels wrong
    pixels = IMAGE_SIZE[0] * IMAGE_SIZE[1]
    valid = pixels - unlabelled_first + pixels - 16 * 32
    assert planted.expected_metrics()['aAcc'] == pytest.approx(
        100 * (1 - (16 * 32 + missed) / valid), rel=1e-12)
    _assert_hand_count(metrics, planted)


def test_planted_counts_unlabelled_predictions_as_misses():
    """A prediction outside the classes (PnP-OVSS's 255) is in no class's
    prediction area, only in its ground truth's area (mmseg's IoUMetric)."""
    from mmseg.evaluation import IoUMetric
    pred = np.array([[0, UNLABELLED], [1, 1]])
    gt = np.array([[0, 0], [1, 2]])
    # by hand, classes 0 / 1 / 2: I = 1 / 1 / 0, U = 2 / 2 / 1, gt area
    # 2 / 1 / 1
    expected = dict(aAcc=50.0, mIoU=100 * (0.5 + 0.5 + 0) / 3,
                    mAcc=100 * (0.5 + 1 + 0) / 3)
    got = expected_metrics([pred], [gt], 3)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12)
    areas = IoUMetric.intersect_and_union(torch.from_numpy(pred),
                                          torch.from_numpy(gt), 3, 255)
    assert [a.tolist() for a in areas] == [[1, 1, 0], [2, 2, 1], [1, 2, 0],
                                           [2, 1, 1]]
    # the ground truth of an unlabelled pixel is ignored, not 255 + 1
    # (which VOC20's uint8 label files would wrap around to 0)
    truth = uncorrupted(pred, 20)
    assert truth.tolist() == [[0, IGNORE], [1, 1]]
    assert encode_labels(truth, 'voc20').tolist() == [[1, 255], [2, 2]]
    with pytest.raises(OVSSDataError, match=r'voc20 labels \[255\].*uint8'):
        encode_labels(pred, 'voc20')


def test_tools_test_uncorrupted_voc20_scores_exactly_100(tmp_path, repo_root,
                                                         blip_folder):
    """Ground truth = the direct prediction (unlabelled pixels ignored):
    through the real tool every metric is 100; a negative control, the
    tool run at another cross-attention head, is far from it."""
    cfg = _voc20_config(tmp_path, repo_root, blip_folder, crf=None)
    argv, planted = _plant_voc20(tmp_path, cfg, corrupted=False)
    metrics = run_tool('test', argv)
    assert {k: float(metrics[k]) for k in ('aAcc', 'mIoU', 'mAcc')} == \
        dict(aAcc=100.0, mIoU=100.0, mAcc=100.0)
    for prediction in planted.predictions:
        assert len(np.unique(prediction[prediction != UNLABELLED])) >= 2
    other = run_tool('test', argv + ['model.cross_attention_head=2'])
    assert float(other['mIoU']) < 90


def test_search_reward_masks_are_per_class():
    """§3.4: each class of the image is thresholded on its own; masks may
    overlap (no argmax partition)."""
    from mmseg_ovss.testing.tools import load_tool
    search = load_tool('pnp_search')
    h, w = 2, 3
    salience = torch.zeros(2, h, w)
    salience[0] = 1.0
    salience[0, -1, -1] = 0.0  # class 0: all but one corner patch
    salience[1, :, :1] = 1.0  # class 1: the left column
    for stage, sigma in (('gradcam', None), ('blur', 0.05)):
        masks = search.masks_from_salience(salience, (30, 42), 0.15, sigma,
                                           stage)
        assert masks.shape == (2, 30, 42) and masks.dtype == bool
        assert masks[0].mean() > 0.7 and masks[1].any()
        assert masks[1][:, :10].all() and not masks[1][:, -10:].any()
        # the overlap belongs to both classes
        assert (masks[0] & masks[1]).sum() > 0.8 * masks[1].sum()


def test_search_masks_need_a_threshold(blip_folder):
    from mmseg_ovss.testing.tools import load_tool
    search = load_tool('pnp_search')
    model = build(blip_folder, threshold=None, blur_sigma=None)
    image = _inputs()[0]
    with pytest.raises(OVSSConfigError, match='threshold'):
        search.class_masks(model, image, [0, 2], (30, 42), 'blur')


def test_reward_template(monkeypatch):
    """The authors pass the bare class name to CLIP (the default)."""
    from mmseg_ovss.blip.reward import ClipReward
    from mmseg_ovss.testing.tiny_clip import register_tiny_clip_models
    register_tiny_clip_models()
    seen = []
    for template, expected in (('{}', ['cat', 'dog']),
                               ('a photo of a {}.', ['a photo of a cat.',
                                                     'a photo of a dog.'])):
        reward = ClipReward('ovss-tiny-ViT-8', None, template=template)
        tokenizer = reward.tokenizer
        reward.tokenizer = lambda texts: seen.append(list(texts)) or \
            tokenizer(texts)
        reward.text_features(['cat', 'dog'])
        assert seen[-1] == expected
    assert ClipReward('ovss-tiny-ViT-8', None).template == '{}'
    with pytest.raises(OVSSConfigError, match='one "{}"'):
        ClipReward('ovss-tiny-ViT-8', None, template='a photo')


def test_search_tool_runs_and_resumes(tmp_path, repo_root, blip_folder,
                                      voc20_root, monkeypatch):
    # the config sets DenseCRF, which the search never uses: no pydensecrf
    # needed
    hide_pydensecrf(monkeypatch)
    cfg = _voc20_config(tmp_path, repo_root, blip_folder)
    work = tmp_path / 'search'
    argv = [cfg, '--work-dir', work, '--max-images', 2, '--seed', 3,
            '--layers', '7:8:1', '--heads', '1:12:1',
            '--reward-model', 'tiny', '--reward-pretrained', 'none']
    first = run_tool('pnp_search', argv + ['--trials', 2])
    log = work / 'search_gradcam.jsonl'
    lines = log.read_text().splitlines()
    assert len(lines) == 3 and 'header' in json.loads(lines[0])
    assert all(0 <= t['reward'] for t in first['trials'])
    second = run_tool('pnp_search', argv + ['--trials', 3, '--resume'])
    relog = log.read_text().splitlines()
    assert relog[:3] == lines and len(relog) == 4
    assert [t['params'] for t in second['trials'][:2]] == \
        [t['params'] for t in first['trials']]
    best = second['best']['params']
    assert set(best) == {'cross_attention_layer', 'cross_attention_head',
                         'threshold'}
    # a resumed log of another search is refused
    with pytest.raises(OVSSConfigError, match='different search'):
        run_tool('pnp_search', argv + ['--trials', 3, '--resume',
                                       '--seed', 4])
    blur = run_tool('pnp_search', argv + ['--stage', 'blur', '--trials', 2,
                                          '--reward-template',
                                          'a photo of a {}.'])
    assert set(blur['best']['params']) == {'blur_sigma'}
    header = json.loads((work / 'search_blur.jsonl').read_text()
                        .splitlines()[0])['header']
    assert header['reward_template'] == 'a photo of a {}.'
    assert json.loads(lines[0])['header']['reward_template'] == '{}'
