"""CostVolumeSegmentor + CATSegHead on the tiny random CLIP.

The dense features are checked against open_clip's own blocks and the
CAT-Seg dense-block formula written out; the whole model against its
contract (shapes at every step, q/v-only gradients, a loss that falls, an
847-class vocabulary, CAT-Seg's window ensemble against a direct loop).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import PixelData

from mmseg.structures import SegDataSample
from mmseg_ovss.clip.freeze import qkv_parts
from mmseg_ovss.models.catseg.features import CLIPDenseFeatures
from mmseg_ovss.testing.catseg import (build_tiny_catseg,
                                       tiny_catseg_head_cfg)
from mmseg_ovss.utils.errors import OVSSConfigError

EPS = torch.finfo(torch.float32).eps
NAMES = ['cat', 'dog', 'tree', 'sky', 'road']


def tol(n: int, k: float = 64.0) -> float:
    return k * EPS * math.sqrt(n)


def _samples(labels, size):
    out = []
    for label in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label[None])
        sample.set_metainfo(dict(img_shape=size, ori_shape=size,
                                 pad_shape=size,
                                 padding_size=[0, 0, 0, 0]))
        out.append(sample)
    return out


def _run_blocks(visual, images, upto):
    """open_clip's own blocks 0..upto on the embedded images; returns the
    tokens (B, N, width) after each of them."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = visual.ln_pre(torch.cat([cls, x], 1) + visual.positional_embedding)
    outs = []
    batch_first = getattr(visual.transformer, 'batch_first', True)
    for block in visual.transformer.resblocks[:upto + 1]:
        x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(
            0, 1)
        outs.append(x)
    return outs


def test_dense_features_follow_catseg_and_open_clip():
    model = build_tiny_catseg(NAMES).eval()
    visual = model.backbone.visual
    images = torch.randn(2, 3, 64, 64)  # the tiny CLIP's own 4x4 grid
    with torch.no_grad():
        feats = model.extract_feat(images)
        outs = _run_blocks(visual, images, 4)
        # the CLS of the unmodified path is open_clip's image embedding
        torch.testing.assert_close(feats.cls, visual(images),
                                   atol=tol(64), rtol=1e-5)
        for layer in (1, 3):
            want = outs[layer][:, 1:].transpose(1, 2).reshape(2, 64, 4, 4)
            torch.testing.assert_close(feats.guidance[layer], want)
        # CAT-Seg's forward_dense: value path of each token + CLS input
        block = visual.transformer.resblocks[5]
        x = outs[4]
        w = block.attn.in_proj_weight
        b = block.attn.in_proj_bias
        v = torch.einsum('bnc,dc->bnd', block.ln_1(x), w[128:]) + b[128:]
        o = torch.einsum('bnd,ed->bne', v, block.attn.out_proj.weight) + \
            block.attn.out_proj.bias
        y = x[:, :1] + o
        y = y + block.mlp(block.ln_2(y))
        dense = visual.ln_post(y[:, 1:]) @ visual.proj
    assert isinstance(feats, CLIPDenseFeatures)
    assert feats.patches.shape == (2, 32, 4, 4) and feats.grid == (4, 4)
    torch.testing.assert_close(
        feats.patches, dense.transpose(1, 2).reshape(2, 32, 4, 4),
        atol=tol(64), rtol=1e-5)


def test_attention_weights_and_clip_resolution():
    model = build_tiny_catseg(NAMES, attention_layers=(2,),
                              clip_resolution=64).eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 40, 56))
    assert feats.grid == (4, 4)
    attn = feats.attention[2]
    assert attn.shape == (1, 16)
    assert float(attn.sum()) < 1.0 and float(attn.min()) >= 0.0
    full = build_tiny_catseg(NAMES, attention_layers=(2,),
                             attention_form='full').eval()
    with torch.no_grad():
        weights = full.extract_feat(torch.randn(1, 3, 64, 64)).attention[2]
    assert weights.shape == (1, 4, 17, 17)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 17))


def test_shapes_at_every_step_of_the_head():
    model = build_tiny_catseg(NAMES).eval()
    with torch.no_grad():
        state = model.decode_head.forward_state(
            model.head_inputs(torch.randn(2, 3, 64, 64)))
    assert state.templates.shape == (5, 3, 32)
    assert state.cost.shape == (2, 5, 3, 4, 4)
    assert state.cost_feature.shape == (2, 5, 32, 4, 4)
    assert state.appearance_guidance.shape == (2, 16, 4, 4)
    assert state.text_guidance.shape == (2, 5, 16)
    assert [tuple(g.shape) for g in state.decoder_guidance] == \
        [(2, 8, 8, 8), (2, 4, 16, 16)]
    assert state.aggregated.shape == (2, 5, 32, 4, 4)
    assert state.logits.shape == (2, 5, 16, 16)
    assert state.class_index is None


def test_more_classes_than_pad_len_keep_the_highest_cost_ones():
    names = [f'thing {i}' for i in range(11)]
    model = build_tiny_catseg(names).eval()  # pad_len 8
    with torch.no_grad():
        inputs = model.head_inputs(torch.randn(2, 3, 64, 64))
        state = model.decode_head.forward_state(inputs)
        full = model.decode_head.cost_volume(
            model.decode_head.init_state(inputs))
    assert state.class_index.shape == (2, 8)
    for b in range(2):
        best = [float(full[b, c].max()) for c in range(11)]
        keep = sorted(sorted(range(11), key=lambda c: -best[c])[:8])
        assert state.class_index[b].tolist() == keep
        dropped = [c for c in range(11) if c not in keep]
        assert (state.logits[b, dropped] == -100.0).all()
        torch.testing.assert_close(state.cost[b], full[b, keep])


def test_class_chunks_give_the_same_scores():
    model = build_tiny_catseg(NAMES).eval()
    images = torch.randn(1, 3, 64, 64)
    meta = [dict(img_shape=(64, 64), pad_shape=(64, 64))]
    with torch.no_grad():
        want = model.encode_decode(images, meta)
        model.decode_head.class_chunk_size = 2
        got = model.encode_decode(images, meta)
    torch.testing.assert_close(got, want, atol=tol(256), rtol=1e-5)
    assert want.shape == (1, 5, 64, 64)
    assert float(want.min()) >= 0 and float(want.max()) <= 1


def test_only_query_and_value_projections_of_clip_get_gradients():
    model = build_tiny_catseg(NAMES).train()
    labels = torch.randint(0, 5, (2, 64, 64))
    losses = model.loss(torch.randn(2, 3, 64, 64), _samples(labels, (64, 64)))
    sum(losses.values()).backward()
    towers = (('image', model.backbone.visual.transformer.resblocks[:-1]),
              ('text', model.text_encoder.transformer.resblocks))
    for name, blocks in towers:
        for block in blocks:
            q, k, v = qkv_parts(block.attn, 'in_proj_weight')
            assert q.grad is not None and q.grad.abs().sum() > 0, name
            assert v.grad is not None and v.grad.abs().sum() > 0, name
            assert k.grad is None and not k.requires_grad, name
            for bias in qkv_parts(block.attn, 'in_proj_bias'):
                assert not bias.requires_grad  # CAT-Seg: weights only
            assert block.attn.out_proj.weight.grad is None
            assert block.mlp[0].weight.grad is None
    # the dense last block reads only its value path
    last = model.backbone.visual.transformer.resblocks[-1]
    assert qkv_parts(last.attn, 'in_proj_weight')[2].grad.abs().sum() > 0
    head = [p for p in model.decode_head.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in head)


def test_q_v_biases_train_when_asked():
    model = build_tiny_catseg(NAMES, train_qv_bias=True)
    q, k, v = qkv_parts(model.backbone.visual.transformer.resblocks[0].attn,
                        'in_proj_bias')
    assert q.requires_grad and v.requires_grad and not k.requires_grad


def test_a_few_optimiser_steps_lower_the_loss():
    model = build_tiny_catseg(NAMES).train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, :, 32:] = 3
    labels[1, :16] = 255
    samples = _samples(labels, (64, 64))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-3)
    history = []
    for _ in range(6):
        loss = sum(model.loss(images, samples).values())
        optim.zero_grad()
        loss.backward()
        optim.step()
        history.append(float(loss.detach()))
    assert history[-1] < history[0] - 0.05, history


def test_847_classes_through_the_whole_model():
    names = [f'category {i}' for i in range(847)]
    for pad_len in (8, 0):
        head = tiny_catseg_head_cfg(pad_len=pad_len, class_chunk_size=300)
        model = build_tiny_catseg(names, head=head).eval()
        images = torch.randn(1, 3, 48, 48)
        samples = _samples([torch.zeros(48, 48, dtype=torch.long)], (48, 48))
        with torch.no_grad():
            out = model.predict(images, samples)
        scores = out[0].seg_logits.data
        assert scores.shape == (847, 48, 48)
        assert torch.isfinite(scores).all()
        assert out[0].pred_sem_seg.data.max() < 847
        if pad_len:  # 839 classes are not selected: sigmoid(-100)
            assert int((scores.amax(dim=(1, 2)) < 1e-30).sum()) == 839


def _direct_view_scores(model, view):
    """The head's logits of every class resized to the view, then the
    sigmoid (CAT-Seg's ``inference_sliding_window`` order)."""
    logits = model.decode_head.forward(model.head_inputs(view))
    return F.interpolate(logits, view.shape[-2:], mode='bilinear',
                         align_corners=False).sigmoid()


def test_catseg_ensemble_against_a_window_loop():
    cfg = dict(mode='catseg_ensemble', kernel=32, overlap=0.5,
               ensemble_size=(48, 48))
    model = build_tiny_catseg(NAMES, test_cfg=cfg).eval()
    image = torch.randn(1, 3, 40, 44)
    padded = F.pad(image, (0, 4, 0, 8))  # (left, right, top, bottom)
    meta = [dict(img_shape=(40, 44), pad_shape=(48, 48),
                 padding_size=[0, 4, 0, 8], ori_shape=(40, 44))]
    with torch.no_grad():
        got = model.inference(padded, meta)
        big = F.interpolate(image, (48, 48), mode='bilinear',
                            align_corners=False)
        total = torch.zeros(1, 5, 48, 48)
        count = torch.zeros(1, 1, 48, 48)
        for top in (0, 16):
            for left in (0, 16):
                crop = big[:, :, top:top + 32, left:left + 32]
                total[:, :, top:top + 32, left:left + 32] += \
                    _direct_view_scores(model, crop)
                count[:, :, top:top + 32, left:left + 32] += 1
        whole = _direct_view_scores(model, F.interpolate(
            image, (32, 32), mode='bilinear', align_corners=False))
        whole = F.interpolate(whole, (48, 48), mode='bilinear',
                              align_corners=False)
        fused = (total / count + whole) / 2
        want = F.interpolate(fused, (40, 44), mode='bilinear',
                             align_corners=False)
    # at the original size (here the unpadded region's), padding dropped
    assert got.shape == (1, 5, 40, 44)
    torch.testing.assert_close(got, want, atol=tol(64), rtol=1e-5)


@pytest.mark.parametrize('flip', [None, 'horizontal', 'vertical'])
def test_catseg_ensemble_resizes_once_to_the_original_size(flip):
    """The fused ensemble_size map goes straight to ori_shape (CAT-Seg's
    sem_seg_postprocess), not to the resized image and then again to
    ori_shape; padding and flips are undone; images of one batch keep their
    own sizes."""
    cfg = dict(mode='catseg_ensemble', kernel=32, overlap=0.5,
               ensemble_size=(48, 48))
    model = build_tiny_catseg(NAMES, test_cfg=cfg).eval()
    torch.manual_seed(2)
    inputs = torch.randn(2, 3, 48, 48)
    pads = ([0, 4, 0, 8], [2, 0, 6, 0])  # (left, right, top, bottom)
    oris = ((57, 31), (23, 70))
    samples = []
    for pad, ori in zip(pads, oris):
        sample = SegDataSample()
        sample.set_metainfo(dict(
            img_shape=(48 - pad[2] - pad[3], 48 - pad[0] - pad[1]),
            pad_shape=(48, 48), padding_size=pad, ori_shape=ori,
            flip=flip is not None, flip_direction=flip))
        samples.append(sample)
    with torch.no_grad():
        # the fused 48 x 48 maps, taken at ori_shape = ensemble_size
        fused = model.inference(inputs, [dict(
            s.metainfo, ori_shape=(48, 48)) for s in samples])
        out = model.predict(inputs, samples)
    dims = {None: (), 'horizontal': (-1, ), 'vertical': (-2, )}[flip]
    for i, sample in enumerate(out):
        want = F.interpolate(fused[i:i + 1], oris[i], mode='bilinear',
                             align_corners=False)[0].flip(dims=dims)
        got = sample.seg_logits.data
        assert got.shape == (5, *oris[i])
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        assert torch.equal(sample.pred_sem_seg.data[0], want.argmax(0))


def test_catseg_ensemble_reads_mmseg_s_test_padding_key():
    """mmseg's SegDataPreProcessor pads test batches with stack_batch,
    which records 'img_padding_size' (OVSSSegDataPreProcessor:
    'padding_size'): the ensemble leaves the padding out either way."""
    cfg = dict(mode='catseg_ensemble', kernel=32, overlap=0.5,
               ensemble_size=(48, 48))
    model = build_tiny_catseg(NAMES, test_cfg=cfg).eval()
    torch.manual_seed(3)
    inputs = torch.randn(1, 3, 48, 48)
    meta = dict(img_shape=(40, 44), pad_shape=(48, 48), ori_shape=(40, 44))
    pad = [0, 4, 0, 8]  # (left, right, top, bottom)
    with torch.no_grad():
        by_ovss_key = model.inference(inputs, [dict(meta, padding_size=pad)])
        by_mmseg_key = model.inference(inputs,
                                       [dict(meta, img_padding_size=pad)])
        unpadded = model.inference(inputs[..., :40, :44], [dict(
            meta, pad_shape=(40, 44), padding_size=[0, 0, 0, 0])])
    torch.testing.assert_close(by_mmseg_key, by_ovss_key, atol=0, rtol=0)
    torch.testing.assert_close(by_ovss_key, unpadded, atol=0, rtol=0)


def test_slide_mode_and_bad_settings():
    model = build_tiny_catseg(
        NAMES, test_cfg=dict(mode='slide', crop_size=(32, 32),
                             stride=(16, 16)), clip_resolution=64).eval()
    samples = _samples([torch.zeros(48, 64, dtype=torch.long)], (48, 64))
    with torch.no_grad():
        out = model.predict(torch.randn(1, 3, 48, 64), samples)
    assert out[0].seg_logits.data.shape == (5, 48, 64)
    with pytest.raises(OVSSConfigError, match='tiled'):
        build_tiny_catseg(NAMES, test_cfg=dict(
            mode='catseg_ensemble', kernel=32, overlap=0.333,
            ensemble_size=(48, 48)))
    with pytest.raises(OVSSConfigError, match='dense_residual'):
        build_tiny_catseg(NAMES, dense_residual='none')
    with pytest.raises(OVSSConfigError, match='guidance_layers'):
        build_tiny_catseg(NAMES, guidance_layers=(9,))
    with pytest.raises(OVSSConfigError, match='num_templates=80'):
        build_tiny_catseg(NAMES, head=tiny_catseg_head_cfg(
            num_templates=80))


@pytest.mark.parametrize('head_type', ['CATSegHead', 'DCPCLIPHead'])
def test_num_templates_come_from_the_text_encoder(head_type):
    """A head config without num_templates (or None) takes the text
    encoder's count, so overriding the templates alone is enough; a head
    built alone keeps 80; a given count must agree."""
    from test_dcpclip_head import head_cfg
    from mmseg.registry import MODELS
    head = tiny_catseg_head_cfg() if head_type == 'CATSegHead' else \
        head_cfg()
    head.pop('num_templates')
    model = build_tiny_catseg(
        NAMES, head=head, text_encoder=dict(
            freeze='attn_qv', templates=['a photo of a {}.']),
        attention_layers=(2, 4) if head_type == 'DCPCLIPHead' else ())
    assert model.decode_head.num_templates == 1
    model.eval()
    with torch.no_grad():
        scores = model.encode_decode(torch.randn(1, 3, 64, 64),
                                     [dict(img_shape=(64, 64))])
    assert scores.shape == (1, len(NAMES), 64, 64)
    model = build_tiny_catseg(NAMES, head=dict(head, num_templates=None),
                              attention_layers=model.attention_layers)
    assert model.decode_head.num_templates == 3
    assert MODELS.build(dict(head, in_channels=32)).num_templates == 80
    with pytest.raises(OVSSConfigError, match='num_templates=2'):
        build_tiny_catseg(NAMES, head=dict(head, num_templates=2))
