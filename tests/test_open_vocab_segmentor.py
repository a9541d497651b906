"""OpenVocabEncoderDecoder: run-time vocabulary, text inputs, calibration.

The head here is the simplest head of the contract (cosine similarity of
the projected patch features to the class embeddings, sigmoid), so that the
segmentor's own steps are checked against direct computations.
"""
import json

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData

from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg_ovss.models.segmentors.open_vocab import (OpenVocabInputs,
                                                     per_class_mean)
from mmseg_ovss.testing.tiny_clip import register_tiny_clip_models
from mmseg_ovss.utils.errors import OVSSConfigError


@MODELS.register_module(force=True)
class _CosineSigmoidTestHead(BaseDecodeHead):
    """sigmoid(logit_scale * cos(patch, class)) maps (test head)."""
    uses_template_embeddings = True

    def __init__(self, **kwargs):
        super().__init__(in_channels=1, channels=1, num_classes=1, **kwargs)
        del self.conv_seg
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, inputs: OpenVocabInputs):
        patches = F.normalize(inputs.visual[-1][0], dim=1)
        text = inputs.text.embeddings.to(patches.dtype)
        return torch.einsum('bdhw,cd->bchw', patches, text) * 10 + self.bias

    def loss(self, inputs, batch_data_samples, train_cfg):
        logits = self.forward(inputs)
        labels = torch.stack([s.gt_sem_seg.data[0] for s in batch_data_samples])
        logits = F.interpolate(logits, labels.shape[-2:], mode='bilinear')
        return dict(loss_ce=F.cross_entropy(logits, labels, ignore_index=255))

    def predict(self, inputs, batch_img_metas, test_cfg):
        logits = self.forward(inputs)
        size = batch_img_metas[0]['img_shape']
        return F.interpolate(logits, size, mode='bilinear').sigmoid()


def _model(**kwargs):
    register_tiny_clip_models()
    init_default_scope('mmseg')
    cfg = dict(
        type='OpenVocabEncoderDecoder',
        clip=dict(model_name='ovss-tiny-ViT-16', pretrained=None,
                  random_init=True),
        backbone=dict(out_space='projected'),
        text_encoder=dict(templates=['a photo of a {}.', 'a {}.']),
        decode_head=dict(type='_CosineSigmoidTestHead'),
        data_preprocessor=dict(type='SegDataPreProcessor'))
    cfg.update(kwargs)
    return MODELS.build(cfg)


def test_no_vocabulary_names_the_fix():
    model = _model()
    with pytest.raises(OVSSConfigError, match='DatasetVocabularyHook'):
        model.text_inputs()


def test_text_inputs_follow_the_stage_vocabulary(tmp_path):
    names = tmp_path / 'map.json'
    names.write_text(json.dumps({'pottedplant': ['potted plant', 'plant']}))
    model = _model(class_names=['cat', 'pottedplant'], class_name_map=str(names))
    text = model.text_inputs()
    assert text.class_names == ('cat', 'pottedplant')
    per_template = model.text_encoder.encode_templates(
        ['cat', 'potted plant', 'plant'])
    # class 1 = normalised mean over its two names of their (normalised)
    # template means; templates kept per class, each the names' mean
    assert text.embeddings.shape == (2, per_template.shape[-1])
    means = F.normalize(per_template.mean(1), dim=-1)
    expected = torch.stack([means[0], F.normalize(means[1] + means[2], dim=0)])
    tol = 16 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(text.embeddings, expected, atol=tol, rtol=0)
    expected_t = torch.stack([
        per_template[0],
        F.normalize(per_template[1] + per_template[2], dim=-1)])
    torch.testing.assert_close(text.template_embeddings, expected_t,
                               atol=tol, rtol=0)
    model.set_dataset_classes(['dog', 'cat', 'bird'])
    assert model.num_classes == model.out_channels == 3
    assert model.text_inputs().embeddings.shape[0] == 3
    assert model.text_inputs().seen_ids is None


def test_class_name_synonyms_rules():
    # ADE-847 writes synonyms into its class names; CAT-Seg prompts the
    # first one (cat_seg_predictor.py get_text_embeds)
    classes = ['building, edifice', 'road, route', 'cat']
    prompts = {rule: _model(class_names=classes,
                            class_name_synonyms=rule).vocabulary().synonyms
               for rule in ('whole', 'first', 'all')}
    assert prompts['whole'] == (('building, edifice', ), ('road, route', ),
                                ('cat', ))
    assert prompts['first'] == (('building', ), ('road', ), ('cat', ))
    assert prompts['all'] == (('building', 'edifice'), ('road', 'route'),
                              ('cat', ))
    # the embeddings follow: 'first' embeds the first synonym alone
    model = _model(class_names=classes, class_name_synonyms='first')
    per_template = model.text_encoder.encode_templates(['building'])
    tol = 16 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(model.text_inputs().template_embeddings[0],
                               per_template[0], atol=tol, rtol=0)
    # a class_name_map entry wins over the rule
    model = _model(class_names=classes, class_name_synonyms='first',
                   class_name_map={'road, route': 'street'})
    assert model.vocabulary().synonyms[1] == ('street', )
    with pytest.raises(OVSSConfigError, match='class_name_synonyms'):
        _model(class_name_synonyms='last')


def test_first_synonyms_shared_by_two_classes_warn_not_fail():
    # ADE-847 has two classes whose first synonym is "screen": CAT-Seg
    # prompts both alike; the later can never win, and the warning says so
    model = _model(class_names=['screen, silver screen', 'screen, crt screen'],
                   class_name_synonyms='first')
    with pytest.warns(UserWarning, match='can never win'):
        vocab = model.vocabulary()
    assert vocab.synonyms == (('screen', ), ('screen', ))
    with pytest.raises(OVSSConfigError, match='duplicate class'):
        _model(class_names=['screen', 'screen']).vocabulary()


def test_zero_shot_split_is_checked():
    model = _model(class_names=['a', 'b', 'c'])
    with pytest.raises(OVSSConfigError, match='partition'):
        model.set_zero_shot_split([0, 1], [1])
    with pytest.raises(OVSSConfigError, match='partition'):
        model.set_zero_shot_split([0, 3], [])
    model.set_zero_shot_split([0, 2], [1])
    text = model.text_inputs()
    assert (text.seen_ids, text.unseen_ids) == ((0, 2), (1, ))
    model.set_dataset_classes(['a', 'b'])  # a new stage clears the split
    assert model.text_inputs().seen_ids is None


def test_seen_scores_are_calibrated_only_with_unseen_classes():
    torch.manual_seed(0)
    model = _model(class_names=['a', 'b', 'c'], seen_score_offset=0.1)
    model.eval()
    inputs = torch.randn(1, 3, 32, 32)
    metas = [dict(img_shape=(32, 32), ori_shape=(32, 32), pad_shape=(32, 32))]
    with torch.no_grad():
        plain = model.encode_decode(inputs, metas)
        model.set_zero_shot_split([0, 2], [1])
        calibrated = model.encode_decode(inputs, metas)
        model.set_zero_shot_split([0, 1, 2], [])
        supervised = model.encode_decode(inputs, metas)
    torch.testing.assert_close(calibrated[:, [0, 2]], plain[:, [0, 2]] - 0.1)
    torch.testing.assert_close(calibrated[:, 1], plain[:, 1])
    torch.testing.assert_close(supervised, plain)
    with pytest.raises(OVSSConfigError, match='seen_score_offset'):
        _model(seen_score_offset=1.5)


def test_loss_and_predict_through_mmseg_calls():
    torch.manual_seed(0)
    model = _model(class_names=['a', 'b', 'c'],
                   test_cfg=dict(mode='slide', crop_size=(32, 32),
                                 stride=(16, 16)))
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 48, 48)))
    sample.set_metainfo(dict(img_shape=(48, 48), ori_shape=(48, 48),
                             pad_shape=(48, 48)))
    losses = model.loss(torch.randn(1, 3, 48, 48), [sample])
    assert set(losses) == {'decode.loss_ce'}
    losses['decode.loss_ce'].backward()
    assert model.decode_head.bias.grad is not None
    # frozen CLIP towers: no gradient buffers
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.text_encoder.parameters())
    model.eval()
    with torch.no_grad():
        out = model.predict(torch.randn(1, 3, 48, 48), [sample])
    assert out[0].seg_logits.data.shape == (3, 48, 48)
    assert out[0].pred_sem_seg.data.shape == (1, 48, 48)


def test_per_class_mean_matches_a_direct_mean():
    rows = F.normalize(torch.randn(5, 4), dim=-1)
    index = torch.tensor([0, 2, 2, 1, 2])
    got = per_class_mean(rows, index, 3)
    for c in range(3):
        direct = F.normalize(rows[index == c].sum(0), dim=0)
        torch.testing.assert_close(got[c], direct)


def test_name_map_files_are_read_with_clear_errors(tmp_path):
    from mmseg_ovss.clip.vocabulary import read_name_lists
    path = tmp_path / 'names.json'
    path.write_text(json.dumps({'tvmonitor': ['tv', 'monitor'], 'sky': 'sky',
                                'river': []}))
    names = read_name_lists(str(path), 'name_map', 'names to names',
                            allow_empty=True)
    assert names == {'tvmonitor': ('tv', 'monitor'), 'sky': ('sky', ),
                     'river': ()}
    # the prompt names of a class may not be empty
    with pytest.raises(OVSSConfigError, match=r"class_name_map\['river'\]"):
        read_name_lists(str(path), 'class_name_map', 'names to names')
    path.write_text('{not json')
    with pytest.raises(OVSSConfigError, match='cannot be read'):
        read_name_lists(str(path), 'class_name_map', 'names to names')
    with pytest.raises(OVSSConfigError, match='must be a dict'):
        read_name_lists(['a'], 'class_name_map', 'names to names')
