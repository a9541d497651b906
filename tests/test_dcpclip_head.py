"""DCPCLIPHead in CostVolumeSegmentor on the tiny random CLIP."""
import copy
import math
from pathlib import Path

import pytest
import torch
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData

from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg_ovss.models.dcpclip.category_selection import CategorySelection
from mmseg_ovss.models.dcpclip.head import selected_pixel_bce
from mmseg_ovss.utils.errors import OVSSConfigError

TEMPLATES = ['a photo of a {}.', 'a picture of a {}.', 'a rendering of a {}.']
CLASSES = ['person', 'car', 'tree', 'sky', 'road', 'grass', 'river', 'wall']
REPO = Path(__file__).resolve().parents[1]


def head_cfg(**overrides):
    cfg = dict(
        type='DCPCLIPHead',
        in_channels=32,  # the tiny CLIP's joint width
        channels=32,
        num_templates=len(TEMPLATES),
        cost_embed=dict(kernel_size=7),
        category_selection=dict(type='DynamicCategorySelection',
                                threshold=0.5),
        alignment=dict(type='TextGuidedAlignment', ca_heads=4, sa_heads=4),
        decoder=dict(type='SpatialEnhancedDecoder',
                     encoder_channels=(32, 64, 64),
                     encoder_upsample_channels=(0, 16, 8),
                     encoder_dims=(16, 8, 8), decoder_channels=(32, 16),
                     num_layers=2, window_size=2, num_heads=4),
        num_attention_layers=2,
        attention_maps='cls',
        loss_decode=dict(type='PixelBCELoss'))
    cfg.update(overrides)
    return cfg


def model_cfg(class_names=CLASSES, head=None, **overrides):
    cfg = dict(
        type='CostVolumeSegmentor',
        clip=dict(model_name='ovss-tiny-ViT-16', pretrained=None,
                  random_init=True),
        backbone=dict(freeze='attn_qv'),
        text_encoder=dict(freeze='attn_qv', templates=TEMPLATES),
        decode_head=head or head_cfg(),
        guidance_layers=(1, 3),
        attention_layers=(2, 4),
        attention_form='cls',
        class_names=list(class_names),
        data_preprocessor=dict(type='SegDataPreProcessor',
                               mean=[122.771, 116.746, 104.094],
                               std=[68.501, 66.632, 70.323],
                               bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
        train_cfg=dict(),
        test_cfg=dict(mode='whole'))
    cfg.update(copy.deepcopy(overrides))
    return cfg


def build(seed=0, **kwargs):
    import mmseg_ovss.testing.tiny_clip  # noqa: F401 (registers the CLIPs)
    init_default_scope('mmseg')
    torch.manual_seed(seed)
    return MODELS.build(model_cfg(**kwargs))


def samples(labels):
    out = []
    for label in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label.unsqueeze(0))
        sample.set_metainfo(dict(img_shape=tuple(label.shape),
                                 ori_shape=tuple(label.shape)))
        out.append(sample)
    return out


def test_selected_bce_against_a_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    labels = torch.tensor([[[0, 1], [255, 2]], [[0, 0], [1, 255]]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    for mode in ('negative', 'exclude'):
        totals, counts = [0.0, 0.0], [0, 0]
        for b in range(2):
            for k in range(3):
                if not valid[b, k]:
                    continue
                for y in range(2):
                    for x in range(2):
                        ignored = labels[b, y, x] == 255
                        if ignored and mode == 'exclude':
                            continue
                        target = float(labels[b, y, x] == k)
                        p = 1 / (1 + math.exp(-logits[b, k, y, x]))
                        totals[b] -= target * math.log(p) + \
                            (1 - target) * math.log(1 - p)
                        counts[b] += 1
        expected = {'batch': sum(totals) / sum(counts),
                    'image': (totals[0] / counts[0] +
                              totals[1] / counts[1]) / 2}
        # the loss is computed in float32 (AMP-safe) over 24 terms
        eps = torch.finfo(torch.float32).eps
        for normalization, value in expected.items():
            got = selected_pixel_bce(logits, labels, valid, 255, mode,
                                     normalization)
            assert got.item() == pytest.approx(
                value, rel=10 * eps * math.sqrt(24))
        # the images select 3 and 2 classes: the two normalizations differ
        assert expected['batch'] != pytest.approx(expected['image'])
    with pytest.raises(OVSSConfigError, match='normalization'):
        selected_pixel_bce(logits, labels, valid, 255, 'negative', 'pixel')


def test_present_classes_and_slot_labels():
    head = MODELS.build(head_cfg())
    labels = torch.tensor([[[0, 3], [255, 5]], [[1, 1], [1, 1]]])
    present = head.present_classes(labels, 6)
    assert present.tolist() == [[True, False, False, True, False, True],
                                [False, True, False, False, False, False]]
    mask = torch.tensor([[True, False, False, False, False, True],
                         [False, True, True, False, False, False]])
    sel = CategorySelection.from_mask(mask)
    slots = head.slot_labels(labels, sel, 6)
    # class 3 is not selected for image 0: its pixel is ignored
    assert slots.tolist() == [[[0, 255], [255, 1]], [[0, 0], [0, 0]]]


def test_loss_runs_on_the_selected_classes_with_forced_gt():
    model = build(head=head_cfg(category_selection=dict(
        type='DynamicCategorySelection', threshold=0.9,
        combine='intersection', training_gt='force')))
    model.train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[0, :, 32:] = 6
    labels[1, 10:20] = 3
    labels[1, 40:] = 255
    head = model.decode_head
    inputs = model.head_inputs(images)
    present = head.present_classes(labels, len(CLASSES))
    state = head.forward_state(inputs, gt_classes=present)
    # every ground-truth class is selected, and the head ran on K slots
    assert (state.selection.mask | ~present).all()
    width = state.selection.width
    assert width < len(CLASSES)
    assert state.cost.shape[:3] == (2, width, len(TEMPLATES))
    assert state.slot_logits.shape == (2, width, 16, 16)
    assert state.logits.shape == (2, len(CLASSES), 16, 16)
    unselected = ~state.selection.mask
    assert (state.logits.permute(0, 2, 3, 1)[unselected.unsqueeze(1)
                                              .unsqueeze(1).expand(
                                                  -1, 16, 16, -1)]
            == head.unselected_logit).all()
    losses = model.loss(images, samples(labels))
    assert set(losses) == {'decode.loss_bce'}
    loss = losses['decode.loss_bce']
    assert torch.isfinite(loss)
    loss.backward()
    for module in (head.alignment, head.decoder, head.cost_embed):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)


def test_ignore_rule_drops_missed_gt_pixels():
    model = build(head=head_cfg(category_selection=dict(
        type='DynamicCategorySelection', threshold=0.9,
        combine='intersection', training_gt='ignore')))
    model.train()
    head = model.decode_head
    images = torch.randn(1, 3, 64, 64)
    labels = torch.arange(8).repeat_interleave(8).view(1, 1, 64).expand(
        1, 64, 64).clone()
    present = head.present_classes(labels, len(CLASSES))
    state = head.forward_state(model.head_inputs(images), gt_classes=present)
    slots = head.slot_labels(labels, state.selection, len(CLASSES))
    missed = ~state.selection.mask[0][labels[0]]
    assert missed.any()
    assert (slots[0][missed] == head.ignore_index).all()
    assert (slots[0][~missed] != head.ignore_index).all()


def test_a_few_steps_lower_the_loss():
    model = build(seed=1)
    model.train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, 32:] = 3
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=1e-3)
    values = []
    for _ in range(4):
        loss = model.loss(images, samples(labels))['decode.loss_bce']
        optim.zero_grad()
        loss.backward()
        optim.step()
        values.append(loss.item())
    assert values[-1] < values[0]


def test_847_classes_through_the_whole_model():
    names = (REPO / 'data/class_names/ade847.txt').read_text().splitlines()
    # whole lines: their first names are not unique ("screen")
    names = [n.strip() for n in names if n.strip()]
    assert len(names) == 847
    model = build(class_names=names, head=head_cfg(tag_validation=dict(
        type='TagValidation', top_k=5)))
    model.eval()
    images = torch.randn(1, 3, 64, 64)
    metas = [dict(img_shape=(64, 64), ori_shape=(64, 64))]
    with torch.no_grad():
        state = model.decode_head.forward_state(model.head_inputs(images))
        scores = model.encode_decode(images, metas)
    assert state.selection.width < 847  # the head ran on C' classes
    assert scores.shape == (1, 847, 64, 64)
    assert torch.isfinite(scores).all()
    labels = scores.argmax(dim=1)
    selected = state.selection.mask[0]
    # tag validation may move a region to any class; without it, the
    # labels are selected classes
    model.decode_head.tag_validation = None
    with torch.no_grad():
        plain = model.encode_decode(images, metas)
    assert selected[plain.argmax(dim=1)].all()
    assert (plain[0][~selected] < 1e-30).all()
    assert labels.shape == (1, 64, 64)


@pytest.mark.parametrize('overrides', [
    dict(category_selection=None, alignment=None,
         decoder=dict(type='UpsamplingDecoder', guidance_in_channels=64,
                      channels=(32, 16), guidance_channels=(16, 8),
                      guidance_proj_channels=(8, 4)),
         num_attention_layers=0),
    dict(alignment=dict(type='TextGuidedAlignment', ca=False, ca_heads=4,
                        sa_heads=4)),
    # CAT-Seg's aggregator kept in front of the alignment
    dict(aggregator=dict(num_layers=1, spatial=dict(num_heads=4,
                                                    window_size=2),
                         classwise=dict(num_heads=4, pool_size=(2, 2),
                                        test_pool_size=(1, 1))),
         appearance_guidance_channels=16, text_guidance_channels=16),
    dict(decoder=dict(type='SpatialEnhancedDecoder', swin=False,
                      fuse_attention=False, encoder_channels=(32, 64),
                      encoder_upsample_channels=(0, 16),
                      encoder_dims=(16, 8), decoder_channels=(32, ),
                      num_layers=1, window_size=2, num_heads=4),
         num_attention_layers=0),
])
def test_ablation_switches_build_and_run(overrides):
    if overrides.get('decoder', {}).get('num_layers') == 1:
        kwargs = dict(guidance_layers=(1, ), attention_layers=())
    elif overrides.get('num_attention_layers') == 0:
        kwargs = dict(attention_layers=())
    else:
        kwargs = {}
    model = build(head=head_cfg(**overrides), **kwargs)
    model.eval()
    images = torch.randn(1, 3, 64, 64)
    metas = [dict(img_shape=(64, 64), ori_shape=(64, 64))]
    with torch.no_grad():
        scores = model.encode_decode(images, metas)
    assert scores.shape == (1, len(CLASSES), 64, 64)
    assert torch.isfinite(scores).all()


def test_affinity_attention_maps():
    """attention_maps='affinity': each layer's head-averaged patch-to-patch
    weights as h*w decoder channels (the segmentor's full weights)."""
    model = build(head=head_cfg(attention_maps='affinity',
                                grid_size=(4, 4)),
                  attention_form='full')
    model.eval()
    head = model.decode_head
    assert head.attention_channels == 2 * 16
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        inputs = model.head_inputs(images)
        state = head.init_state(inputs)
        state.cost = torch.zeros(1)
        maps = head.attention_input(state)
    assert maps.shape == (1, 32, 4, 4)
    first = inputs.visual.attention[min(inputs.visual.attention)]
    mean = first.mean(dim=1)[0, -16:, -16:]
    for y in range(4):
        for x in range(4):
            # channel j at position i: how much patch i attends to patch j
            assert torch.allclose(maps[0, :16, y, x], mean[y * 4 + x])


def test_class_chunks_at_inference_give_the_same_scores():
    model = build(head=head_cfg(category_selection=dict(
        type='DynamicCategorySelection', threshold=0.0)))
    model.eval()
    images = torch.randn(1, 3, 64, 64)
    metas = [dict(img_shape=(64, 64), ori_shape=(64, 64))]
    with torch.no_grad():
        whole = model.encode_decode(images, metas)
        model.decode_head.class_chunk_size = 3
        chunked = model.encode_decode(images, metas)
    eps = torch.finfo(torch.float32).eps
    assert torch.allclose(whole, chunked, atol=1000 * eps)


def test_mixed_precision_loss_and_scores():
    """Under autocast (bf16 on CPU, what --amp uses there) the loss and the
    scores stay finite and the loss backpropagates."""
    model = build(head=head_cfg(tag_validation=dict(type='TagValidation')))
    model.train()
    images = torch.randn(1, 3, 64, 64)
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[:, :, 40:] = 2
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = model.loss(images, samples(labels))['decode.loss_bce']
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    model.eval()
    metas = [dict(img_shape=(64, 64), ori_shape=(64, 64))]
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        scores = model.encode_decode(images, metas)
    assert torch.isfinite(scores.float()).all()


SED_TINY = dict(type='SpatialEnhancedDecoder', encoder_channels=(32, 64, 64),
                encoder_upsample_channels=(0, 16, 8), encoder_dims=(16, 8, 8),
                decoder_channels=(32, 16), num_layers=2, window_size=2,
                num_heads=4)


@pytest.mark.parametrize('overrides', [
    dict(appearance_guidance_channels=16, text_guidance_channels=16),
    dict(decoder=dict(SED_TINY, swin=False)),
    dict(decoder=dict(SED_TINY, fuse_encoder=False, fuse_cost=False),
         alignment=dict(type='TextGuidedAlignment', sa=False, ca_heads=4,
                        guidance=dict(prompt=False, cls_logits=False))),
    dict(category_selection=None,
         alignment=dict(type='TextGuidedAlignment', ca=False, sa_heads=4)),
])
def test_no_unused_parameters(overrides):
    """Every learnable head parameter gets a gradient (DDP needs it) in the
    full model and in ablations; a config that keeps CAT-Seg's guidance
    widths without an aggregator builds no guidance projections."""
    model = build(head=head_cfg(**overrides))
    head = model.decode_head
    assert head.appearance_projection is None
    assert head.text_projection is None
    model.train()
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[:, 20:] = 4
    model.loss(torch.randn(1, 3, 64, 64),
               samples(labels))['decode.loss_bce'].backward()
    missing = [name for name, p in head.named_parameters()
               if p.requires_grad and p.grad is None]
    assert missing == []


def test_tag_validation_runs_once_on_the_ensemble_label_map():
    """Under CAT-Seg's window + whole-image ensemble, tag validation runs
    once per image, on the fused scores of its unpadded region (the final
    label map), with the dense CLIP features of the whole-image view; the
    views themselves are not validated."""
    import torch.nn.functional as F
    seen = CLASSES[:4]  # the other 4 classes are "unseen in training"
    model = build(
        head=head_cfg(tag_validation=dict(type='TagValidation', top_k=1,
                                          seen_classes=seen)),
        test_cfg=dict(mode='catseg_ensemble', kernel=32, overlap=0.5,
                      ensemble_size=(48, 48)))
    model.eval()
    tv = model.decode_head.tag_validation
    validate = tv.forward
    calls = []

    def spy(scores, *args, **kwargs):
        calls.append(tuple(scores.shape))
        return validate(scores, *args, **kwargs)

    tv.forward = spy
    torch.manual_seed(3)
    images = torch.randn(2, 3, 48, 48)
    images[1, :, 40:] = 0
    images[1, :, :, 44:] = 0
    metas = [dict(img_shape=(48, 48), pad_shape=(48, 48),
                  padding_size=[0, 0, 0, 0], ori_shape=(48, 48)),
             dict(img_shape=(40, 44), pad_shape=(48, 48),
                  padding_size=[0, 4, 0, 8], ori_shape=(40, 44))]
    with torch.no_grad():
        got = model.inference(images, metas)
        assert calls == [(1, 8, 48, 48), (1, 8, 40, 44)]
        model.decode_head.tag_validation = None
        plain = model.inference(images, metas)
        text = model.text_inputs()
        changed = 0
        for i, (h, w) in enumerate(((48, 48), (40, 44))):
            view = F.interpolate(images[i:i + 1, :, :h, :w], (32, 32),
                                 mode='bilinear', align_corners=False)
            features = model.extract_feat(view).patches
            region = plain[i:i + 1, :, :h, :w]
            want = validate(region, features, text.embeddings,
                            text.class_names).argmax(1)
            assert torch.equal(got[i:i + 1, :, :h, :w].argmax(1), want)
            changed += int((want != region.argmax(1)).sum())
    # the case exercises a relabelling (random weights, top-1)
    assert changed > 0
    assert (got[1, :, 40:] == 0).all() and (got[1, :, :, 44:] == 0).all()


def test_scores_fill_the_unselected_classes_after_the_resize():
    """``predict`` takes the sigmoid of the K selected classes and resizes
    them only; the result equals the sigmoid of all C classes' logits
    (unselected at ``unselected_logit``) resized (CAT-Seg's whole-image
    order)."""
    import torch.nn.functional as F
    model = build()
    model.eval()
    images = torch.randn(1, 3, 64, 64)
    metas = [dict(img_shape=(64, 64), ori_shape=(64, 64))]
    with torch.no_grad():
        head = model.decode_head
        inputs = model.head_inputs(images)
        state = head.forward_state(inputs)
        assert state.selection.width < len(CLASSES)
        got = head.predict(inputs, metas)
        want = F.interpolate(state.logits.sigmoid(), (64, 64),
                             mode='bilinear', align_corners=False)
    # sigmoid(-100) is a float32 denormal; the selected classes' scores
    # agree to the rounding of a 4-term bilinear sum
    torch.testing.assert_close(got, want, rtol=0,
                               atol=8 * torch.finfo(torch.float32).eps)


def test_ensemble_on_the_union_of_the_view_classes_against_a_loop():
    """DCP-CLIP's ensemble fuses the views on the union of the classes they
    selected; it equals CAT-Seg's ensemble over all C classes computed
    directly (a loop over the 2 x 2 windows and the whole image, every
    class's logits resized to the view, then the sigmoid)."""
    import torch.nn.functional as F
    model = build(test_cfg=dict(mode='catseg_ensemble', kernel=32,
                                overlap=0.5, ensemble_size=(48, 48)))
    model.eval()
    torch.manual_seed(5)
    image = torch.randn(1, 3, 40, 44)
    padded = F.pad(image, (0, 4, 0, 8))
    meta = [dict(img_shape=(40, 44), pad_shape=(48, 48),
                 padding_size=[0, 4, 0, 8], ori_shape=(40, 44))]

    def direct(view):
        state = model.decode_head.forward_state(model.head_inputs(view))
        return F.interpolate(state.logits, view.shape[-2:], mode='bilinear',
                             align_corners=False).sigmoid(), state

    with torch.no_grad():
        got = model.inference(padded, meta)
        big = F.interpolate(image, (48, 48), mode='bilinear',
                            align_corners=False)
        total = torch.zeros(1, len(CLASSES), 48, 48)
        count = torch.zeros(1, 1, 48, 48)
        union = torch.zeros(len(CLASSES), dtype=torch.bool)
        for top in (0, 16):
            for left in (0, 16):
                scores, state = direct(big[:, :, top:top + 32,
                                           left:left + 32])
                union |= state.selection.mask[0]
                total[:, :, top:top + 32, left:left + 32] += scores
                count[:, :, top:top + 32, left:left + 32] += 1
        whole, state = direct(F.interpolate(image, (32, 32),
                                            mode='bilinear',
                                            align_corners=False))
        union |= state.selection.mask[0]
        whole = F.interpolate(whole, (48, 48), mode='bilinear',
                              align_corners=False)
        want = F.interpolate((total / count + whole) / 2, (40, 44),
                             mode='bilinear', align_corners=False)
    assert not union.all()  # the union path ran on fewer than C classes
    # at the original size (here the unpadded region's), padding dropped
    assert got.shape == (1, len(CLASSES), 40, 44)
    # bilinear resizes, a fold and 5-view means of scores in [0, 1]
    tol = 16 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(got, want, atol=tol, rtol=0)
    assert (got[0, ~union] < 1e-30).all()
