"""PnP-OVSS table rows as configs (issue 12, items 7-9, 11): the Table 3
resolution / BLIP COCO / BridgeTower rows, Table 5 and 6 rows, the Table 4
unseen-class protocol and the authors' caption words; BridgeTower through
the PnP segmentor."""
import glob
import json
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_ovss  # noqa: F401
from mmseg_ovss.blip.caption_names import (AUTHORS_CAPTION_NAMES,
                                           read_caption_names)
from mmseg_ovss.blip.vocabulary import read_synonyms
from mmseg_ovss.engine.launch import check_config_keys
from mmseg_ovss.testing.tiny_blip import make_tiny_blip
from mmseg_ovss.testing.tiny_bridgetower import make_tiny_bridgetower
from mmseg_ovss.testing.tools import run_tool
from mmseg_ovss.utils.errors import OVSSConfigError

REPO = Path(__file__).resolve().parents[1]
PNP = REPO / 'configs' / 'pnp_ovss'
DATASETS = ('voc20', 'pc59', 'object', 'stuff', 'ade')
PREPROCESSOR = dict(type='SegDataPreProcessor',
                    mean=[122.770938, 116.74601, 104.093735],
                    std=[68.500534, 66.632244, 70.323165],
                    bgr_to_rgb=True, pad_val=0, seg_pad_val=255)


def _cfg(rel):
    return Config.fromfile(str(PNP / rel))


def _short_side(cfg):
    resize = [t for t in cfg.test_dataloader.dataset.pipeline
              if t['type'] == 'Resize']
    assert len(resize) == 1
    return resize[0]['scale'][1]


# ------------------------------------------------------- config contents
@pytest.mark.parametrize('name', DATASETS)
def test_table3_rows(name):
    """Every Table 3 row of PnP-OVSS: BLIP Flickr at five short sides, BLIP
    COCO at 768, BridgeTower at 322 / 336 / 770 (no hand edits)."""
    for res in (224, 320, 336, 448):
        cfg = _cfg(f'blip_{name}_{res}.py')
        assert _short_side(cfg) == res
        assert cfg.model.blip.pretrained == 'large-flickr'
    assert _short_side(_cfg(f'blip_{name}.py')) == 768
    coco = _cfg(f'blip-coco_{name}.py')
    assert coco.model.blip.pretrained == 'large-coco'
    assert _short_side(coco) == 768
    for res, rel in ((770, f'bridgetower_{name}.py'),
                     (322, f'bridgetower_{name}_322.py'),
                     (336, f'bridgetower_{name}_336.py')):
        cfg = _cfg(rel)
        assert _short_side(cfg) == res and res % 14 == 0
        assert cfg.model.blip is None
        assert cfg.model.bridgetower.pretrained == 'large-itm'
        # Table 2's BridgeTower solution
        assert (cfg.model.cross_attention_layer,
                cfg.model.cross_attention_head) == (2, 8)
        # same vocabulary as the BLIP config of the dataset
        assert cfg.model.class_names == _cfg(f'blip_{name}.py').model.\
            class_names


@pytest.mark.parametrize('name', ['pc59', 'stuff'])
def test_table5_rows(name):
    rows = {}
    for path in sorted((PNP / 'ablations').glob(f'blip_{name}_*.py')):
        rows[path.stem.split(f'blip_{name}_')[1]] = Config.fromfile(
            str(path)).model
    assert set(rows) == {'attention', 'gradcam', 'drop1', 'drop2', 'drop3',
                         'drop4', 'drop4-blur', 'drop4-crf',
                         'drop4-blur-crf'}
    att = rows['attention']
    assert not att.use_gradcam and att.salience_dropout is None
    assert att.normalization == 'softmax' and att.threshold is None
    assert rows['gradcam'].use_gradcam and \
        rows['gradcam'].salience_dropout is None
    for n in range(1, 5):  # "+ Drop n": n rounds after the first pass
        row = rows[f'drop{n}']
        assert row.salience_dropout.iterations == n + 1
        assert row.blur_sigma is None and row.crf is None
    assert rows['drop4-blur'].blur_sigma == 0.05 and \
        rows['drop4-blur'].crf is None
    assert rows['drop4-crf'].blur_sigma is None and rows['drop4-crf'].crf
    full = rows['drop4-blur-crf']
    assert full.blur_sigma == 0.05 and full.crf and \
        full.salience_dropout.iterations == 5


def test_table6_rows():
    for i in range(1, 13):
        mean = _cfg(f'table6/blip_stuff_336_layer{i}_mean.py')
        assert (mean.model.cross_attention_layer,
                mean.model.cross_attention_head) == (i, 'mean')
        head = _cfg(f'table6/blip_stuff_336_layer8_head{i}.py')
        assert (head.model.cross_attention_layer,
                head.model.cross_attention_head) == (8, i)
        for cfg in (mean, head):
            assert _short_side(cfg) == 336
            assert cfg.model.class_names.endswith('coco_stuff171.txt')


def test_unseen_protocol_configs():
    for rel, split, unseen in (
            ('unseen/blip_voc20_15-5.py', 'voc_15_5.json', 5),
            ('unseen/blip_pc59_49-10.py', 'pc59_49_10.json', 10),
            ('unseen/blip_stuff_156-15.py', 'coco_stuff_156_15.json', 15)):
        cfg = _cfg(rel)
        assert cfg.test_evaluator.type == 'ZeroShotIoUMetric'
        assert cfg.test_evaluator.split.endswith(split)
        data = json.loads((REPO / 'data/splits' / split).read_text())
        ids = data.get('unseen_ids') or data.get('unseen')
        assert len(ids) == unseen


def test_every_pnp_config_passes_the_key_check():
    paths = sorted(glob.glob(str(PNP / '**/*.py'), recursive=True))
    assert len(paths) >= 90
    for path in paths:
        check_config_keys(Config.fromfile(path), path)


# ------------------------------------------------------- caption names
def test_authors_caption_names_match_the_vocabularies():
    """One caption word per vocabulary class; the facts of the authors'
    code: VOC "table", ADE names without spaces, COCO without hyphens."""
    table = json.loads((REPO / AUTHORS_CAPTION_NAMES).read_text())
    for key in ('voc20', 'pc59', 'coco_object', 'coco_stuff171', 'ade150'):
        names = read_caption_names(dict(path=AUTHORS_CAPTION_NAMES, key=key))
        vocab = read_synonyms(f'data/class_names/{key}.txt', 'allow')
        assert len(names) == len(vocab) == len(table[key])
        assert all(' ' not in n and '-' not in n for n in names)
    voc = table['voc20']
    assert voc[10] == 'table' and voc[15] == 'pottedplant' and \
        voc[19] == 'tvmonitor'
    pc59 = read_synonyms('data/class_names/pc59.txt')
    assert table['pc59'] == [n[0] for n in pc59]  # the authors' = mmseg's
    ade = table['ade150']
    assert ade[44] == 'chestofdrawers' and ade[56] == 'billiardtable'
    assert ade[58] == ade[130] == 'screen'  # two classes, one word
    assert table['coco_object'][10] == 'trafficlight'
    assert table['coco_stuff171'][84] == 'buildingother'
    with pytest.raises(OVSSConfigError, match='no list "voc21"'):
        read_caption_names(dict(path=AUTHORS_CAPTION_NAMES, key='voc21'))


@pytest.fixture(scope='module')
def blip_folder(tmp_path_factory):
    return make_tiny_blip(tmp_path_factory.mktemp('tiny_blip_rows'))


@pytest.fixture(scope='module')
def bridgetower_folder(tmp_path_factory):
    return make_tiny_bridgetower(tmp_path_factory.mktemp('tiny_bt'))


def test_caption_names_reach_the_caption(blip_folder):
    init_default_scope('mmseg')
    model = MODELS.build(dict(
        type='PnPOVSS', data_preprocessor=PREPROCESSOR,
        blip=dict(pretrained=blip_folder), crf=None,
        class_names=['cat', 'dining table', 'dog'],
        caption_names=['cat', 'table', 'dog']))
    caption = model.captions([0, 1, 2]).captions[0]
    assert caption == 'a picture of cat table dog'
    ids = model.tokenizer('a picture of cat table dog',
                          add_special_tokens=False)['input_ids']
    batch = model.captions([0, 1, 2])
    assert batch.input_ids[0, 1:-1].tolist() == ids
    with pytest.raises(OVSSConfigError, match='one caption name per class'):
        model.caption_names = ['cat']
        model._captions.clear()
        model.captions([0])


# ----------------------------------------------------------- BridgeTower
def _bridgetower(folder, **kwargs):
    init_default_scope('mmseg')
    cfg = dict(type='PnPOVSS', data_preprocessor=PREPROCESSOR,
               bridgetower=dict(pretrained=folder), crf=None,
               class_names=['cat', 'dog', 'zebra'],
               cross_attention_layer=2, cross_attention_head=8)
    cfg.update(kwargs)
    return MODELS.build(cfg).eval()


def test_bridgetower_caption_is_its_sentence_tokenization(
        bridgetower_folder):
    """RoBERTa BPE: the names carry their leading space ("Ġcat"), so the
    caption's ids are those of the whole sentence between <s> and </s>."""
    model = _bridgetower(bridgetower_folder)
    batch = model.captions([0, 1, 2])
    sentence = model.tokenizer('a picture of cat dog zebra')['input_ids']
    assert batch.input_ids[0].tolist() == sentence
    tokens = model.tokenizer.convert_ids_to_tokens(sentence)
    assert tokens[0] == '<s>' and tokens[-1] == '</s>' and \
        tokens[4] == 'Ġcat'
    # zebra is several BPE pieces: its map is their mean
    weights = batch.token_weights[0, 2]
    assert (weights > 0).sum() > 1
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


def test_bridgetower_gradcam_is_eq1_of_the_chosen_head(bridgetower_folder):
    """Eq. 1 computed directly: hook the layer's attention in a plain
    transformers forward with the pixels requiring grad, differentiate the
    match logit, attention x clamp(grad) of head 8, CLS column dropped."""
    model = _bridgetower(bridgetower_folder)
    adapter = model.cross_attention
    bt = adapter.model
    pixels = torch.randn(1, 3, 56, 70, generator=torch.Generator()
                         .manual_seed(1))
    batch = model.captions([0, 1, 2])
    maps = adapter.token_maps(pixels, batch.input_ids, batch.attention_mask)
    store = {}
    module = bt.bridgetower.cross_modal_text_layers[1].crossattention.self

    def keep_probs(_module, _inputs, outputs):
        store['p'] = outputs[1]

    handle = module.register_forward_hook(keep_probs)
    leaf = pixels.clone().requires_grad_(True)
    out = bt.bridgetower(input_ids=batch.input_ids,
                         attention_mask=batch.attention_mask,
                         pixel_values=leaf, interpolate_pos_encoding=True)
    logit = bt.itm_score(out.pooler_output)[0, 1]
    handle.remove()
    (grad, ) = torch.autograd.grad(logit, [store['p']])
    expected = store['p'][0, 7, :, 1:] * grad[0, 7, :, 1:].clamp(min=0)
    # fp32 through 6 cross-modal layers of width 32
    atol = 32 * 6 * torch.finfo(torch.float32).eps * float(
        expected.abs().max())
    torch.testing.assert_close(maps.gradcam[0, 0], expected.detach(),
                               rtol=0, atol=atol)
    assert maps.gradcam.shape[-1] == (56 // 14) * (70 // 14)
    # the mean over heads (Table 6): mean of the per-head GradCAM maps
    adapter.head = None
    mean = adapter.token_maps(pixels, batch.input_ids, batch.attention_mask)
    per_head = (store['p'][0, :, :, 1:] * grad[0, :, :, 1:].clamp(min=0))
    torch.testing.assert_close(mean.gradcam[0, 0],
                               per_head.mean(0).detach(), rtol=0, atol=atol)


def test_bridgetower_segments_and_rejects_bad_layers(bridgetower_folder):
    model = _bridgetower(bridgetower_folder, cross_attention_layer=1)
    sample = SegDataSample(metainfo=dict(img_shape=(42, 56),
                                         ori_shape=(30, 40)))
    with torch.no_grad():
        out = model.predict(torch.randn(1, 3, 42, 56), [sample])[0]
    assert out.pred_sem_seg.data.shape == (1, 30, 40)
    assert out.seg_logits.data.shape == (3, 30, 40)
    with pytest.raises(OVSSConfigError, match='layers 1..6'):
        _bridgetower(bridgetower_folder, cross_attention_layer=7)
    with pytest.raises(OVSSConfigError, match='heads 1..16'):
        _bridgetower(bridgetower_folder, cross_attention_head=17)
    with pytest.raises(OVSSConfigError, match='exactly one VLM'):
        _bridgetower(bridgetower_folder, blip=dict(pretrained='x'))


# ------------------------------------------------- tools/test.py end to end
E2E = [
    ('blip_voc20_224.py', 'voc20', 'blip'),
    ('blip-coco_voc20.py', 'voc20', 'blip'),
    ('blip_voc20_authors-names.py', 'voc20', 'blip'),
    ('bridgetower_voc20_336.py', 'voc20', 'bridgetower'),
    ('ablations/blip_pc59_drop1.py', 'pc59', 'blip'),
    ('ablations/blip_pc59_attention.py', 'pc59', 'blip'),
    ('table6/blip_stuff_336_layer3_mean.py', 'coco_stuff171', 'blip'),
    ('unseen/blip_voc20_15-5.py', 'voc20', 'blip'),
]


@pytest.mark.parametrize('rel,dataset,vlm', E2E, ids=[e[0] for e in E2E])
def test_row_configs_run_tools_test(tmp_path, blip_folder,
                                    bridgetower_folder, rel, dataset, vlm):
    """The config as shipped, with the tiny random VLM, a 2-image dataset
    and a small short side (no pydensecrf needed: CRF off)."""
    from mmseg_ovss.testing.tiny_datasets import (exported_data_root,
                                                  make_tiny_dataset)
    make_tiny_dataset(dataset, tmp_path / 'data', image_size=(32, 48))
    folder = blip_folder if vlm == 'blip' else bridgetower_folder
    side = 28 if vlm == 'bridgetower' else 32
    with exported_data_root(tmp_path / 'data'):
        metrics = run_tool('test', [
            str(PNP / rel), '--work-dir', str(tmp_path / 'work'),
            '--cfg-options', f'model.{vlm}.pretrained={folder}',
            'model.crf=None', f'test_dataloader.dataset.pipeline.1.scale='
            f'(2048,{side})', 'test_dataloader.num_workers=0',
            'test_dataloader.persistent_workers=False'])
    assert 'mIoU' in metrics
    if rel.startswith('unseen/'):
        assert 'mIoU_unseen' in metrics and 'hIoU' in metrics
