"""The ground-truth vocabulary oracle (FreeCP Fig. 1b, Table 1 "w/ GT") and
the description queries of the baseline head (Table 4 "Baseline" rows).

The oracle is checked against an independent route: the same model with its
vocabulary set by hand (``set_vocabulary``) to the annotated classes, its
labels mapped back to the dataset's ids by a lookup written here."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_ovss  # noqa: F401
from mmseg_ovss.clip.vocabulary import Vocabulary
from mmseg_ovss.freecp.gt_vocabulary import (annotated_classes,
                                             restrict_vocabulary)
from mmseg_ovss.models.text_encoders.open_clip_text_encoder import \
    OpenCLIPTextEncoder
from mmseg_ovss.testing.tiny_clip import register_tiny_clip_models
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

MODEL = 'ovss-tiny-ViT-16'
LINES = ['background, sky, wall', 'cat, kitten', 'dog', 'grass', 'car',
         'tree, bush']


@pytest.fixture(scope='module')
def text():
    register_tiny_clip_models()
    return OpenCLIPTextEncoder(model_name=MODEL, random_init=True, seed=0,
                               templates='single',
                               truncate_context=False).eval()


def test_restrict_vocabulary_keeps_the_rows_of_the_kept_classes(text):
    vocab = text.embed_vocabulary(Vocabulary.from_names(LINES, 0))
    kept = torch.tensor([0, 1, 5])
    small = restrict_vocabulary(vocab, kept)
    # expected rows, by a loop over the full vocabulary's queries
    rows, owners = [], []
    for q, owner in enumerate(vocab.query_to_class.tolist()):
        if owner in (0, 1, 5):
            rows.append(vocab.query_embeddings[q])
            owners.append({0: 0, 1: 1, 5: 2}[owner])
    assert torch.equal(small.query_embeddings, torch.stack(rows))
    assert small.query_to_class.tolist() == owners == [0, 0, 0, 1, 1, 2, 2]
    assert small.class_names == ['background', 'cat', 'tree']
    assert small.synonyms[2] == ['tree', 'bush']
    assert small.background_class == 0 and small.parent is vocab
    # a restriction of a restriction points at the full vocabulary
    smaller = restrict_vocabulary(small, torch.tensor([2]))
    assert smaller.parent is vocab and smaller.class_ids.tolist() == [5]
    assert smaller.background_class is None


def sample_with_truth(labels: np.ndarray) -> SegDataSample:
    shape = labels.shape
    sample = SegDataSample(metainfo=dict(
        ori_shape=shape, img_shape=shape, pad_shape=shape,
        padding_size=[0, 0, 0, 0]))
    sample.gt_sem_seg = PixelData(data=torch.from_numpy(labels)[None])
    return sample


def test_annotated_classes_and_their_errors(text):
    vocab = text.embed_vocabulary(Vocabulary.from_names(LINES, 0))
    truth = np.full((8, 8), 255, dtype=np.int64)
    truth[:4] = 3
    truth[4:, :2] = 5
    # the background class is always kept; the ignore index never
    assert annotated_classes(sample_with_truth(truth), vocab).tolist() == \
        [0, 3, 5]
    assert annotated_classes(
        sample_with_truth(np.full((4, 4), 255)),
        text.embed_vocabulary(Vocabulary.from_names(LINES[1:]))) is None
    truth[0, 0] = 6
    with pytest.raises(OVSSDataError, match=r'label\(s\) \[6\] outside'):
        annotated_classes(sample_with_truth(truth), vocab)
    with pytest.raises(OVSSDataError, match='LoadAnnotations'):
        annotated_classes(SegDataSample(), vocab)


def segmentor(head: dict, gt_vocabulary: bool, test_cfg=None):
    init_default_scope('mmseg')
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = MODELS.build(dict(
            type='CLIPDenseSegmentor',
            clip=dict(model_name=MODEL, random_init=True),
            backbone=dict(type='OpenCLIPViT',
                          dense_strategy=dict(type='SCLIP', residual=False)),
            text_encoder=dict(type='OpenCLIPTextEncoder', templates='single',
                              truncate_context=False),
            decode_head=head, gt_vocabulary=gt_vocabulary,
            test_cfg=test_cfg or dict(mode='slide', crop_size=(32, 32),
                                      stride=(16, 16)))).eval()
    warned = [w for w in caught if 'gt_vocabulary=True' in str(w.message)]
    assert bool(warned) == gt_vocabulary  # the oracle always warns
    model.set_vocabulary(LINES, background_class=0)
    return model


HEADS = {
    'cosine': dict(type='CosineSimilarityHead', logit_scale=40.0),
    'freecp_refine': dict(type='FreeCPHead', descriptions=None,
                          ap_text='templates', purification='none'),
    'freecp': dict(type='FreeCPHead', rp_threshold=0.0, ap_threshold=0.3,
                   descriptions=None, ap_text='templates', crop_size=32),
}


@pytest.mark.parametrize('head', list(HEADS))
@torch.no_grad()
def test_oracle_equals_the_vocabulary_set_by_hand(head):
    """Per image: the oracle's labels are the labels of the same model
    whose vocabulary was set to the image's annotated classes (background
    included), mapped back to the full vocabulary's ids."""
    oracle = segmentor(HEADS[head], True)
    by_hand = segmentor(HEADS[head], False)
    torch.manual_seed(3)
    images = torch.randn(2, 3, 48, 64)
    truths = [np.full((48, 64), 255, dtype=np.int64) for _ in range(2)]
    truths[0][:24], truths[0][24:, :40] = 2, 4
    truths[1][:, :30], truths[1][:, 30:] = 1, 5
    samples = [sample_with_truth(t) for t in truths]
    results = oracle.predict(images, samples)
    for index, (truth, result) in enumerate(zip(truths, results)):
        kept = sorted({0} | set(np.unique(truth[truth != 255]).tolist()))
        by_hand.set_vocabulary([LINES[c] for c in kept], background_class=0)
        shape = truth.shape
        hand = by_hand.predict(images[index:index + 1], [SegDataSample(
            metainfo=dict(ori_shape=shape, img_shape=shape, pad_shape=shape,
                          padding_size=[0, 0, 0, 0]))])[0]
        expected = np.vectorize(dict(enumerate(kept)).get)(
            hand.pred_sem_seg.data[0].numpy())
        labels = result.pred_sem_seg.data[0].numpy()
        assert np.array_equal(labels, expected)
        assert set(np.unique(labels)) <= set(kept)
        # stored scores: the kept classes' scores, the others 0
        scores = result.seg_logits.data
        assert scores.shape[0] == len(LINES)
        left_out = [c for c in range(len(LINES)) if c not in kept]
        assert torch.equal(scores[left_out],
                           torch.zeros_like(scores[left_out]))
        assert torch.allclose(scores[kept], hand.seg_logits.data)


@torch.no_grad()
def test_oracle_changes_the_result_and_off_is_the_full_vocabulary():
    """A control: FreeCP's refinement depends on the vocabulary, so the
    oracle's labels differ from the full vocabulary's; with the oracle off
    the model predicts every class it likes."""
    torch.manual_seed(3)
    images = torch.randn(1, 3, 48, 64)
    truth = np.full((48, 64), 2, dtype=np.int64)
    sample = sample_with_truth(truth)
    full = segmentor(HEADS['freecp_refine'], False).predict(
        images, [sample])[0].pred_sem_seg.data
    oracle = segmentor(HEADS['freecp_refine'], True).predict(
        images, [sample_with_truth(truth)])[0].pred_sem_seg.data
    assert set(oracle.unique().tolist()) <= {0, 2}
    assert not torch.equal(full, oracle)


def test_oracle_option_errors():
    with pytest.raises(OVSSConfigError, match='gt_vocabulary must be'):
        segmentor(HEADS['cosine'], 'yes')
    model = segmentor(HEADS['cosine'], True)
    with pytest.raises(OVSSDataError, match='has no gt_sem_seg'):
        model.predict(torch.randn(1, 3, 32, 32))


# ------------------------------------------- description queries (Table 4)
@pytest.mark.filterwarnings('ignore:no FreeCP description')
@torch.no_grad()
def test_cosine_head_description_queries(text, tmp_path):
    """queries='descriptions': one query per described foreground class,
    the normalised mean of its raw sentence embeddings; the background
    and an undescribed class keep their template queries."""
    import json
    table = {'cat': ['A small furry pet with whiskers.',
                     'A cat has pointed ears and a long tail.'],
             'dog': ['A dog has a wet nose and floppy ears.'],
             'grass': ['Short green blades covering the ground.'],
             'car': ['A car has four wheels and a windscreen.']}
    path = tmp_path / 'descriptions.json'
    path.write_text(json.dumps(table))
    head = MODELS.build(dict(type='CosineSimilarityHead', logit_scale=40.0,
                             queries='descriptions', descriptions=str(path)))
    vocab = text.embed_vocabulary(Vocabulary.from_names(LINES, 0))
    queries, owners = head.query_text(vocab)
    # background: 3 template queries, cat..car: one each, tree: 2 templates
    assert owners.tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 5]
    assert torch.equal(queries[:3], vocab.query_embeddings[:3])
    assert torch.equal(queries[-2:], vocab.query_embeddings[-2:])
    raw = F.normalize(text.encode_text(table['cat']), dim=-1)
    assert torch.allclose(queries[3], F.normalize(raw.mean(0), dim=0),
                          atol=1e-6)
    # the cosine maps use these queries; class scores take the synonym max
    feats = torch.randn(2, vocab.query_embeddings.shape[1], 3, 4)
    features = type('F', (), {'patch_tokens': feats})()
    maps = head(features, vocab)
    assert maps.shape == (2, 9, 3, 4) == (2, head.num_output_maps(vocab),
                                          3, 4)
    cos = torch.einsum('bdhw,qd->bqhw', F.normalize(feats, dim=1), queries)
    assert torch.allclose(maps, cos, atol=1e-6)
    probs = (40.0 * cos).softmax(1)
    expected = torch.stack([probs[:, owners == c].amax(1)
                            for c in range(6)], 1)
    assert torch.allclose(head.class_scores(maps, vocab), expected)
    # a restricted vocabulary (the oracle) takes the full one's rows
    small = restrict_vocabulary(vocab, torch.tensor([0, 2, 5]))
    q_small, o_small = head.query_text(small)
    assert o_small.tolist() == [0, 0, 0, 1, 2, 2]
    assert torch.equal(q_small[3], queries[4])


def test_cosine_head_query_option_errors():
    with pytest.raises(OVSSConfigError, match='not one of'):
        MODELS.build(dict(type='CosineSimilarityHead', queries='vicuna'))
    with pytest.raises(OVSSConfigError, match='needs a description file'):
        MODELS.build(dict(type='CosineSimilarityHead',
                          queries='descriptions'))
