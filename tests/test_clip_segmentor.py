"""CLIPDenseSegmentor: slide inference, head interface, background rules."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_ovss  # noqa: F401
from mmseg_ovss.clip.dense_head import DenseCLIPHead
from mmseg_ovss.models.heads.cosine_head import synonym_max
from mmseg_ovss.models.segmentors.clip_segmentor import slide_windows
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError
from mmseg_ovss.utils.pamr import PAMR

TINY = dict(model_name='ovss-tiny-ViT-16', random_init=True)
init_default_scope('mmseg')
MEAN, STD = [122.771, 116.746, 104.094], [68.501, 66.632, 70.323]


def build(**kwargs):
    torch.manual_seed(0)
    cfg = dict(
        type='CLIPDenseSegmentor', clip=TINY,
        backbone=dict(type='OpenCLIPViT', dense_strategy=dict(type='SCLIP')),
        text_encoder=dict(type='OpenCLIPTextEncoder', templates='single'),
        decode_head=dict(type='CosineSimilarityHead', logit_scale=40.0),
        data_preprocessor=dict(type='SegDataPreProcessor', mean=MEAN,
                               std=STD, bgr_to_rgb=True),
        test_cfg=dict(mode='slide', crop_size=(32, 32), stride=(16, 16)))
    cfg.update(kwargs)
    model = MODELS.build(cfg).eval()
    model.set_vocabulary(['background', 'cat, kitten', 'dog', 'grass'])
    return model


def sample(h, w, ori=None):
    return SegDataSample(metainfo=dict(
        ori_shape=ori or (h, w), img_shape=(h, w), pad_shape=(h, w),
        padding_size=[0, 0, 0, 0]))


def test_slide_windows_match_mmseg_grid():
    windows = slide_windows(50, 70, (32, 32), (16, 16))
    h_grids = max(50 - 32 + 16 - 1, 0) // 16 + 1
    w_grids = max(70 - 32 + 16 - 1, 0) // 16 + 1
    assert len(windows) == h_grids * w_grids
    assert windows[-1] == (18, 50, 38, 70)  # snapped to the border
    assert all(y2 - y1 == 32 and x2 - x1 == 32 for y1, y2, x1, x2 in windows)
    # image smaller than the window: one window of the image's size
    assert slide_windows(20, 24, (32, 32), (16, 16)) == [(0, 20, 0, 24)]


def test_cosine_head_scores_equal_sclip_formula():
    torch.manual_seed(0)
    cos = torch.rand(2, 5, 3, 4) * 2 - 1
    query_to_class = torch.tensor([0, 0, 1, 2, 2])
    probs = (40 * cos).softmax(1)
    one_hot = F.one_hot(query_to_class).T.view(3, 5, 1, 1).float()
    expected = (probs.unsqueeze(1) * one_hot.unsqueeze(0)).max(2)[0]
    # a max picks one of the values: exact
    assert torch.equal(synonym_max(probs, query_to_class, 3), expected)


@torch.no_grad()
def test_slide_equals_per_window_direct_computation():
    model = build(window_batch_size=3)
    vocab = model.vocabulary_embeddings()
    image = torch.randn(1, 3, 40, 56)
    stitched = model.inference_maps(image, vocab)
    total = torch.zeros(1, 5, 40, 56)
    count = torch.zeros(1, 1, 40, 56)
    for y1, y2, x1, x2 in slide_windows(40, 56, (32, 32), (16, 16)):
        feats = model.backbone.forward_dense(image[..., y1:y2, x1:x2])
        patches = F.normalize(feats.patch_tokens, dim=1)
        cos = torch.einsum('bdhw,qd->bqhw', patches, vocab.query_embeddings)
        total[..., y1:y2, x1:x2] += F.interpolate(
            cos, size=(y2 - y1, x2 - x1), mode='bilinear',
            align_corners=False)
        count[..., y1:y2, x1:x2] += 1
    # windows encoded 3 at a time against one at a time: float32 blocking
    # of the 6 blocks' products (width 64, MLP 256, 5 tokens) -> relative
    # error of the features, hence of the cosines (<= 1), of at most
    # 6 * (4 * 64 + 64 + 5) * eps; plus a few roundings of the resize
    eps = torch.finfo(torch.float32).eps
    atol = (6 * (4 * 64 + 64 + 5) + 16) * eps
    torch.testing.assert_close(stitched, total / count, atol=atol, rtol=0)


@torch.no_grad()
def test_batch_of_two_sizes_equals_single_images():
    model = build()
    a, b = torch.randn(1, 3, 48, 40), torch.randn(1, 3, 36, 52)
    batch = torch.zeros(2, 3, 48, 52)
    batch[0, :, :48, :40], batch[1, :, :36, :52] = a[0], b[0]
    results = model.predict(batch, [sample(48, 40, (60, 50)),
                                    sample(36, 52)])
    single = model.predict(a, [sample(48, 40, (60, 50))])[0]
    assert results[0].pred_sem_seg.data.shape == (1, 60, 50)
    # images are segmented one by one: the very same operations
    assert torch.equal(results[0].seg_logits.data, single.seg_logits.data)
    single = model.predict(b, [sample(36, 52)])[0]
    assert torch.equal(results[1].seg_logits.data, single.seg_logits.data)
    probs = results[1].seg_logits.data
    assert probs.shape == (4, 36, 52)
    assert torch.all(probs <= 1) and torch.all(probs >= 0)


@torch.no_grad()
def test_image_smaller_than_window_and_patch():
    model = build(test_cfg=dict(mode='slide', crop_size=(64, 64),
                                stride=(32, 32)))
    for h, w in ((20, 30), (7, 9)):
        out = model.predict(torch.randn(1, 3, h, w), [sample(h, w)])[0]
        assert out.pred_sem_seg.data.shape == (1, h, w)
    whole = build(test_cfg=dict(mode='whole'))
    image = torch.randn(1, 3, 20, 30)
    # one window of the image's size either way: the same operations
    assert torch.equal(
        whole.predict(image, [sample(20, 30)])[0].seg_logits.data,
        model.predict(image, [sample(20, 30)])[0].seg_logits.data)


def test_non_rgb_input_is_rejected():
    model = build()
    with pytest.raises(OVSSDataError, match='3-channel'):
        model.predict(torch.randn(1, 1, 32, 32), [sample(32, 32)])
    with pytest.raises(OVSSDataError, match='3-channel'):
        model.predict(torch.randn(1, 4, 32, 32), [sample(32, 32)])


def test_background_rules_prob_and_area_thresholds():
    model = build(prob_thd=0.5, area_thd=0.2)
    vocab = model.vocabulary_embeddings()
    assert vocab.background_class == 0  # class 0 is named "background"
    scores = torch.zeros(4, 2, 10)
    scores[1, :, :9] = 0.9   # cat: 18 px
    scores[2, :, 9:] = 0.8   # dog: 2 px (10 % of the foreground) -> dropped
    scores[3, 0, :3] = 0.4   # grass, never the top class
    labels = model.predict_labels(scores, vocab)[0]
    assert labels[:, :9].eq(1).all()
    assert labels[:, 9:].eq(0).all()  # dog removed by area_thd -> background
    model.area_thd = None
    labels = model.predict_labels(scores, vocab)[0]
    assert labels[:, 9:].eq(2).all()
    low = torch.full((4, 2, 2), 0.25)
    low[2] = 0.3
    assert model.predict_labels(low, vocab).eq(0).all()  # below prob_thd


def test_background_rules_without_a_background_class_warn_once():
    """prob_thd and background_names need a background class: a vocabulary
    without one says so once, when its embeddings are first asked for."""
    model = build(prob_thd=0.5,
                  text=dict(background_names=['background', 'sky']))
    model.set_vocabulary(['sky, wall', 'cat', 'dog'])
    with pytest.warns(UserWarning) as caught:
        vocab = model.vocabulary_embeddings()
    [message] = [str(w.message) for w in caught
                 if 'no background class' in str(w.message)]
    assert "text.background_names=['background', 'sky']" in message
    assert 'prob_thd=0.5' in message and 'ignored' in message
    assert vocab.background_class is None
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model.vocabulary_embeddings()  # the same vocabulary: said once
        model.set_vocabulary(['background', 'cat'])
        assert model.vocabulary_embeddings().background_class == 0


class AttentionProbeHead(DenseCLIPHead):
    required_attention_layers = 'all_but_last'
    requires_cls_token = True
    seen = None

    def forward(self, features, vocab):
        AttentionProbeHead.seen = features
        b, _, h, w = features.patch_tokens.shape
        return features.patch_tokens.new_ones(b, vocab.num_classes, h, w)


@torch.no_grad()
def test_head_interface_receives_requested_features():
    MODELS.register_module(module=AttentionProbeHead, force=True)
    model = build(decode_head=dict(type='AttentionProbeHead'))
    model.predict(torch.randn(1, 3, 32, 48), [sample(32, 48)])
    feats = AttentionProbeHead.seen
    assert sorted(feats.attn_weights) == [0, 1, 2, 3, 4]
    assert feats.attn_weights[0].shape == (2, 4, 5, 5)  # 2 windows, 2x2 grid
    assert feats.cls_token.shape == (2, 32)
    assert feats.encode_image(torch.randn(3, 3, 32, 32)).shape == (3, 32)
    with pytest.raises(OVSSConfigError, match='not a DenseCLIPHead'):
        build(decode_head=dict(type='FCNHead', in_channels=8, channels=8,
                               num_classes=3))


class ImageHookHead(DenseCLIPHead):
    """Window maps = their patch-grid y index; image_maps records its
    arguments and keeps one channel (a tensor, as a head may return)."""
    required_attention_layers = [1]
    attention_heads = 'mean'
    window_resize_mode = 'nearest'
    seen = {}

    def forward(self, features, vocab):
        ImageHookHead.seen['features'] = features
        b, _, h, w = features.patch_tokens.shape
        rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
        return rows.expand(b, vocab.num_classes, h, w)

    def image_maps(self, maps, images, vocab, encode_image, patch_size):
        ImageHookHead.seen.update(maps=maps.render(), images=images,
                                  encode_image=encode_image,
                                  patch_size=patch_size)
        return maps.render()[:, :1]


@torch.no_grad()
def test_image_hook_resize_mode_and_head_mean_attention():
    MODELS.register_module(module=ImageHookHead, force=True)
    model = build(decode_head=dict(type='ImageHookHead'),
                  test_cfg=dict(mode='whole'))
    image = torch.randn(1, 3, 32, 48)
    scores = model.class_scores(image, model.vocabulary_embeddings(),
                                (32, 48))
    seen = ImageHookHead.seen
    assert seen['features'].attn_weights[1].shape == (1, 1, 7, 7)
    assert seen['features'].attn_heads == 'mean'
    assert seen['images'] is image and seen['patch_size'] == 16
    assert seen['encode_image'] == model.backbone.encode_cls
    # nearest resizing: each 16-pixel row band keeps its grid row index
    expected = torch.arange(32).div(16, rounding_mode='floor').float()
    torch.testing.assert_close(seen['maps'][0, 2, :, 0], expected)
    assert scores.shape == (1, 32, 48)  # the hook's output is what's scored


def test_vocabulary_errors():
    model = build()
    with pytest.raises(OVSSConfigError, match='duplicate'):
        model.set_vocabulary(['cat', 'cat'])
        model.vocabulary_embeddings()
    model.set_vocabulary([])
    with pytest.raises(OVSSConfigError, match='empty'):
        model.vocabulary_embeddings()
    model.set_vocabulary(None)
    with pytest.raises(OVSSConfigError, match='no vocabulary'):
        model.vocabulary_embeddings()


def test_pamr_matches_direct_computation():
    torch.manual_seed(0)
    image, masks = torch.rand(1, 3, 6, 7), torch.rand(1, 2, 6, 7)
    dil = (1, 2)
    offsets = [(dy * d, dx * d) for d in dil for dy in (-1, 0, 1)
               for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    centre = [(dy * d, dx * d) for d in dil for dy in (-1, 0, 1)
              for dx in (-1, 0, 1)]

    def px(t, y, x):  # replicate padding
        return t[0, :, min(max(y, 0), 5), min(max(x, 0), 6)]

    aff = torch.zeros(len(offsets), 6, 7)
    largest = 0.0
    for y in range(6):
        for x in range(7):
            sigma = torch.stack([px(image, y + a, x + b)
                                 for a, b in centre]).std(0)
            a = torch.stack([
                (-(px(image, y, x) - px(image, y + dy, x + dx)).abs() /
                 (1e-8 + 0.1 * sigma)).mean() for dy, dx in offsets])
            largest = max(largest, float(a.abs().max()))
            aff[:, y, x] = a.softmax(0)
    expected = masks.clone()
    for _ in range(3):
        new = torch.zeros_like(expected)
        for y in range(6):
            for x in range(7):
                new[0, :, y, x] = sum(
                    aff[k, y, x] * px(expected, y + dy, x + dx)
                    for k, (dy, dx) in enumerate(offsets))
        expected = new
    got = PAMR(num_iter=3, dilations=dil, channels_per_step=1)(image, masks)
    # the affinity logits a (std of 18 values, a 3-channel mean) carry a
    # relative error of about 24 eps, which the softmax over the 16
    # neighbours turns into a relative 2 |a| * 24 eps; each of the 3 steps
    # sums 16 products of values <= 1 (16 eps)
    eps = torch.finfo(torch.float32).eps
    atol = 3 * (2 * largest * 24 + 16) * eps
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)


def test_data_preprocessor_pads_images_not_ground_truth():
    from mmengine.structures import PixelData
    pre = MODELS.build(dict(type='OVSSSegDataPreProcessor', mean=MEAN,
                            std=STD, bgr_to_rgb=True))
    samples = [sample(20, 30), sample(24, 16)]
    for s, (h, w) in zip(samples, ((5, 6), (7, 8))):
        s.gt_sem_seg = PixelData(data=torch.zeros(1, h, w, dtype=torch.long))
    images = [torch.randint(0, 255, (3, 20, 30), dtype=torch.uint8),
              torch.randint(0, 255, (3, 24, 16), dtype=torch.uint8)]
    out = pre(dict(inputs=images, data_samples=samples), False)
    assert out['inputs'].shape == (2, 3, 24, 30)
    assert out['data_samples'][1].padding_size == (0, 14, 0, 0)
    assert out['data_samples'][1].gt_sem_seg.data.shape == (1, 7, 8)
    expected = (images[0][[2, 1, 0]].float() -
                torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(
                    3, 1, 1)
    torch.testing.assert_close(out['inputs'][0, :, :20, :30], expected)


@torch.no_grad()
def test_bfloat16_inference_runs():
    model = build(clip=dict(TINY, precision='bf16'))
    out = model.predict(torch.randn(1, 3, 32, 40), [sample(32, 40)])[0]
    assert out.seg_logits.data.dtype == torch.float32
    assert torch.isfinite(out.seg_logits.data).all()


def test_class_file_must_match_dataset_classes():
    model = build()
    model.set_vocabulary(class_names_file='data/class_names/voc21.txt')
    model.set_dataset_classes(['background', 'cat', 'dog'])
    with pytest.raises(OVSSConfigError, match='has 21 classes'):
        model.vocabulary_embeddings()
    model.set_dataset_classes([f'class {i}' for i in range(21)])
    assert model.vocabulary_embeddings().num_classes == 21


def test_pos_interp_option_reaches_the_backbone():
    """backbone.pos_interp selects the position-embedding resize and is not
    passed to open_clip."""
    from mmseg_ovss.clip.vision_encoder import interpolate_position_embedding
    model = build(backbone=dict(type='OpenCLIPViT', pos_interp='dino',
                                dense_strategy=dict(type='SCLIP')))
    assert model.backbone.pos_interp == 'dino'
    assert build().backbone.pos_interp == 'size'
    image = torch.randn(1, 3, 48, 80)
    x, layout = model.backbone.embed(image)
    assert layout.grid == (3, 5) and layout.num_prefix == 0
    visual = model.backbone.visual
    pos = interpolate_position_embedding(visual.positional_embedding,
                                         (4, 4), layout.grid, 'dino')
    tokens = visual.conv1(image).flatten(2).transpose(1, 2)
    tokens = torch.cat([visual.class_embedding.view(1, 1, -1), tokens], 1)
    torch.testing.assert_close(x, visual.ln_pre(tokens + pos))
    with pytest.raises(OVSSConfigError, match='pos_interp'):
        build(backbone=dict(type='OpenCLIPViT', pos_interp='linear'))


def test_legacy_config_keys_build_the_same_model():
    """The keys of configs written before the towers were registered
    (strategy=, clip.pos_interp, text.templates) still build the same
    model, with a DeprecationWarning naming the new place."""
    new = build(backbone=dict(type='OpenCLIPViT', pos_interp='dino',
                              dense_strategy=dict(type='SCLIP')))
    with pytest.warns(DeprecationWarning, match='backbone.dense_strategy'):
        old = build(backbone=None, text_encoder=None,
                    clip=dict(TINY, pos_interp='dino'),
                    strategy=dict(type='SCLIP'),
                    text=dict(templates='single'))
    assert old.backbone.pos_interp == 'dino'
    assert type(old.backbone.dense_strategy) is \
        type(new.backbone.dense_strategy)
    assert len(old.text_encoder.templates) == 1
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(old_state) == list(new_state)
    for key, value in new_state.items():
        assert torch.equal(old_state[key], value), key
    image = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        expected = new.predict(image, [sample(48, 64)])[0].seg_logits.data
        got = old.predict(image, [sample(48, 64)])[0].seg_logits.data
    assert torch.equal(got, expected)


def test_state_dict_holds_every_clip_weight_once():
    """The two towers share no storage and together hold exactly the
    image and text towers of open_clip's model (issue 9, item 3)."""
    from mmseg_ovss.clip.loading import build_clip_model
    model = build()
    state = model.state_dict(keep_vars=True)
    clip_keys = [key for key in state
                 if key.startswith(('backbone.visual.', 'text_encoder.'))]
    assert all(key.startswith(('backbone.', 'text_encoder.', 'decode_head.'))
               for key in state), sorted(state)
    storages = {}
    for key in clip_keys:
        ptr = state[key].untyped_storage().data_ptr()
        assert ptr not in storages, (key, storages.get(ptr))
        storages[ptr] = key
    reference = build_clip_model(TINY['model_name'], random_init=True)
    # open_clip's own tensors of the two towers (CLIP's causal attn_mask
    # is a non-persistent buffer: neither model saves it)
    expected = {name for name, _ in [*reference.named_parameters(),
                                     *reference.named_buffers()]
                if name != 'attn_mask'}
    expected &= set(reference.state_dict())
    assert len(clip_keys) == len(expected)
    renamed = {key[len('backbone.'):] if key.startswith('backbone.') else
               key[len('text_encoder.'):] for key in clip_keys}
    assert renamed == expected
    reference_state = reference.state_dict()
    for key in clip_keys:
        name = key[len('backbone.'):] if key.startswith('backbone.') else \
            key[len('text_encoder.'):]
        assert torch.equal(state[key].detach(), reference_state[name]), key
