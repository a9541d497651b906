"""BLIP ITM adapter of PnP-OVSS: loading, captions, cross-attention GradCAM."""
import pytest
import torch

from mmseg_ovss.blip.caption import (build_captions, enc_token_id_of,
                                     plan_chunks)
from mmseg_ovss.blip.cross_attention import BlipCrossAttention
from mmseg_ovss.blip.loading import fix_blip_config, load_blip_itm
from mmseg_ovss.testing.tiny_blip import make_tiny_blip
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSWeightsError

NAMES = ['cat', 'potted plant', 'zebra', 'sky']


@pytest.fixture(scope='module')
def blip(tmp_path_factory):
    folder = make_tiny_blip(tmp_path_factory.mktemp('tiny_blip'))
    model, tokenizer = load_blip_itm(folder)
    return model, tokenizer


#: Depth of the fp32 reductions behind a map of the tiny BLIP: its text
#: hidden size x text layers (48 x 8), forward and GradCAM backward (x 2:
#: the gradient goes back through the same depth; an Intel Xeon with AMX
#: needed 1.7 x the forward depth alone).
TERMS = 48 * 8 * 2


def assert_close_fp32(actual, expected, terms=TERMS):
    """|error| <= terms * eps * max|expected| (fp32 summation order may
    change with the batch and the CPU)."""
    atol = terms * torch.finfo(torch.float32).eps * float(
        expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def _pixels(height=64, width=96, seed=0):
    return torch.randn(1, 3, height, width,
                       generator=torch.Generator().manual_seed(seed))


def test_load_errors_name_the_fix(tmp_path):
    with pytest.raises(OVSSWeightsError, match='does not exist'):
        load_blip_itm(str(tmp_path / 'missing_folder'))
    # a hub id with the hub switched off (tests never download)
    with pytest.raises(OVSSWeightsError, match='huggingface-cli download'):
        load_blip_itm('large-flickr', local_files_only=True)
    with pytest.raises(OVSSConfigError, match='tokenizer'):
        load_blip_itm(None, config={})


def test_fix_config_sets_text_heads_and_vit_eps():
    from transformers import BlipConfig
    config = BlipConfig(text_config=dict(num_attention_heads=8),
                        vision_config=dict(layer_norm_eps=1e-5))
    with pytest.warns(UserWarning, match='num_attention_heads'):
        changes = fix_blip_config(config)
    assert len(changes) == 2
    assert config.text_config.num_attention_heads == 12
    assert config.vision_config.layer_norm_eps == 1e-6


def test_caption_layout_starts_with_enc_and_spans_names(blip):
    model, tokenizer = blip
    enc = enc_token_id_of(tokenizer, model.config.text_config.vocab_size)
    assert tokenizer.convert_ids_to_tokens(enc) == '[ENC]'
    cap = build_captions(tokenizer, NAMES, enc, max_tokens=64)
    ids = cap.input_ids[0].tolist()
    assert ids[0] == enc and ids[-1] == tokenizer.sep_token_id
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[1:4] == ['a', 'picture', 'of']
    # each class's weights cover exactly its own tokens and average them
    for j, name in enumerate(NAMES):
        span = cap.token_weights[0, j].nonzero().flatten().tolist()
        words = tokenizer.convert_tokens_to_string(
            [tokens[t] for t in span])
        assert words == name
        torch.testing.assert_close(cap.token_weights[0, j].sum(),
                                   torch.tensor(1.0))
    assert cap.token_weights[0, 2].nonzero().numel() > 1  # "zebra": pieces


def test_chunk_plan_fits_the_limit():
    assert plan_chunks([1, 1, 1], 3, 100) == [(0, 3)]
    assert plan_chunks([2, 2, 2, 1], 3, 9) == [(0, 2), (2, 4)]
    with pytest.raises(OVSSConfigError, match='tokens'):
        plan_chunks([10], 3, 9)


def test_gradcam_matches_direct_autograd(blip):
    """Hooked attention + autograd.grad on a detached ViT against the
    transformers attention output differentiated through the whole model."""
    model, tokenizer = blip
    enc = enc_token_id_of(tokenizer, model.config.text_config.vocab_size)
    cap = build_captions(tokenizer, NAMES, enc, max_tokens=64)
    layer, head = 7, 9
    adapter = BlipCrossAttention(model, layer, head)
    pixels = _pixels()
    with torch.no_grad():  # as inside mmengine's test loop
        maps = adapter.token_maps(adapter.encode_image(pixels),
                                  cap.input_ids, cap.attention_mask)

    direct_pixels = pixels.clone().requires_grad_(True)
    embeds = model.vision_model(direct_pixels, interpolate_pos_encoding=True
                                ).last_hidden_state
    out = model.text_encoder(
        input_ids=cap.input_ids, attention_mask=cap.attention_mask,
        encoder_hidden_states=embeds,
        encoder_attention_mask=torch.ones(embeds.shape[:-1],
                                          dtype=torch.long),
        output_attentions=True)
    attn = out.cross_attentions[layer]
    logit = model.itm_head(out.last_hidden_state[:, 0])[:, 1]
    grad, = torch.autograd.grad(logit.sum(), attn)
    expected = (attn * grad.clamp(min=0))[:, head, :, 1:]
    # the ITM logit equals the transformers model's own forward
    full = model(input_ids=cap.input_ids, pixel_values=pixels,
                 attention_mask=cap.attention_mask,
                 interpolate_pos_encoding=True).itm_score[:, 1]
    assert_close_fp32(maps.itm_logits[0], full.detach())
    assert_close_fp32(maps.attention[0], attn[:, head, :, 1:].detach())
    assert_close_fp32(maps.gradcam[0], expected.detach())
    assert maps.gradcam.shape == (1, 1, cap.input_ids.shape[1], 4 * 6)
    assert maps.gradcam.abs().sum() > 0
    # image encoder backward on (authors' way): the same maps
    grad_pixels = pixels.clone().requires_grad_(True)
    with torch.enable_grad():
        embeds_on = adapter.encode_image(grad_pixels)
    maps_on = adapter.token_maps(embeds_on, cap.input_ids,
                                 cap.attention_mask, grad_inputs=grad_pixels)
    assert_close_fp32(maps_on.gradcam, maps.gradcam)


def test_chunked_and_unchunked_vocabularies_agree(blip):
    model, tokenizer = blip
    enc = enc_token_id_of(tokenizer, model.config.text_config.vocab_size)
    # layer index 0: the tiny random BLIP's class maps at the paper's
    # layer 8 are all 0 (no positive gradient reaches the class tokens)
    adapter = BlipCrossAttention(model, 0, 9)
    with torch.no_grad():
        embeds = adapter.encode_image(torch.cat([_pixels(seed=1),
                                                 _pixels(seed=2)]))

    def class_maps(cap):
        maps = adapter.token_maps(embeds, cap.input_ids, cap.attention_mask)
        per_class = torch.einsum('bctp,ckt->bckp', maps.gradcam,
                                 cap.token_weights)
        return per_class[:, cap.class_valid]

    # the whole vocabulary fits: one chunk, whatever the limit
    whole = build_captions(tokenizer, NAMES, enc, max_tokens=64)
    roomy = build_captions(tokenizer, NAMES, enc, max_tokens=30)
    assert whole.input_ids.shape[0] == roomy.input_ids.shape[0] == 1
    assert (class_maps(whole).flatten(2).amax(-1) > 0).all()
    assert_close_fp32(class_maps(roomy), class_maps(whole))
    # forced chunks: batched, padded chunks equal each caption run alone,
    # concatenated in vocabulary order
    chunked = build_captions(tokenizer, NAMES, enc, max_tokens=12)
    assert chunked.input_ids.shape[0] > 1
    got = class_maps(chunked)
    assert got.shape[1] == len(NAMES)
    start, parts = 0, []
    for c in range(chunked.input_ids.shape[0]):
        count = int(chunked.class_valid[c].sum())
        alone = build_captions(tokenizer, NAMES[start:start + count], enc,
                               max_tokens=64)
        parts.append(class_maps(alone))
        start += count
    assert_close_fp32(got, torch.cat(parts, dim=1))


def test_layer_and_head_are_checked(blip):
    model, _ = blip
    with pytest.raises(OVSSConfigError, match='layer 9'):
        BlipCrossAttention(model, 8, 0)
    with pytest.raises(OVSSConfigError, match='head 13'):
        BlipCrossAttention(model, 0, 12)
