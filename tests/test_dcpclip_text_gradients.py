"""DCP-CLIP's text_gradients='selected': the fine-tuned text tower is run
with gradients on the prompts of the packed classes only, with the loss and
gradients of embedding the whole vocabulary with gradients."""
import math

import pytest
import torch

from test_dcpclip_head import CLASSES, TEMPLATES, build, head_cfg, samples

from mmseg_ovss.utils.errors import OVSSConfigError

# few classes per image: a high image-level threshold and an intersection
NARROW = dict(type='DynamicCategorySelection', threshold=0.9,
              combine='intersection')
AGGREGATOR = dict(
    aggregator=dict(num_layers=1, spatial=dict(num_heads=4, window_size=2),
                    classwise=dict(num_heads=4, pool_size=(2, 2),
                                   test_pool_size=(1, 1))),
    appearance_guidance_channels=16, text_guidance_channels=16)


def batch():
    torch.manual_seed(3)
    images = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    for i, c in enumerate((1, 5, 6, 7)):  # image 0: more classes (forced)
        labels[0, :, 16 * i:16 * (i + 1)] = c
    labels[1, 10:20] = 3
    labels[1, 40:] = 255
    return images, samples(labels)


def count_tower_rows(model):
    """Record (rows, grad enabled) of each text-tower call."""
    calls = []
    encode = model.text_encoder._encode_tokens

    def spy(tokens):
        calls.append((tokens.shape[0], torch.is_grad_enabled()))
        return encode(tokens)

    model.text_encoder._encode_tokens = spy
    return calls


def spy_subsets(model):
    """Record the class ids re-embedded with gradients."""
    subsets = []
    embed = model.embed_class_subset

    def spy(vocab, with_templates, class_ids):
        subsets.append(class_ids.tolist())
        return embed(vocab, with_templates, class_ids)

    model.embed_class_subset = spy
    return subsets


def packed_slots(model, images, data_samples):
    """The batch's (B, K) selection index and validity (training)."""
    head = model.decode_head
    labels = torch.stack([s.gt_sem_seg.data[0] for s in data_samples])
    present = head.present_classes(labels, len(CLASSES))
    with torch.no_grad():
        state = head.forward_state(model.head_inputs(images),
                                   gt_classes=present)
    assert (state.selection.mask | ~present).all()  # forced ground truth
    return state.selection.index, state.selection.valid


def loss_and_grads(model, mode, images, data_samples):
    model.decode_head.text_gradients = mode
    model.zero_grad(set_to_none=True)
    loss = model.loss(images, data_samples)['decode.loss_bce']
    loss.backward()
    return loss.detach(), {name: p.grad.clone()
                           for name, p in model.named_parameters()
                           if p.grad is not None}


@pytest.mark.parametrize('overrides', [{}, AGGREGATOR])
def test_selected_text_gradients_equal_all(overrides):
    """Same loss, same gradient for every parameter (text tower, image
    tower, head) as embedding every class with gradients; with CAT-Seg's
    class aggregation kept, the padding slots' classes matter too."""
    model = build(head=head_cfg(category_selection=NARROW, **overrides))
    model.train()
    subsets = spy_subsets(model)
    images, data_samples = batch()
    loss_all, grads_all = loss_and_grads(model, 'all', images, data_samples)
    assert subsets == []
    loss_sel, grads_sel = loss_and_grads(model, 'selected', images,
                                         data_samples)
    # the test is not vacuous: some classes were left out of the tower's
    # gradient pass, and the tower's trainable weights got gradients
    assert len(subsets) == 1 and 0 < len(subsets[0]) < len(CLASSES)
    # and a padding slot holds a class no image selected (it runs through
    # the head, and CAT-Seg's class aggregation attends over it)
    index, valid = packed_slots(model, images, data_samples)
    assert set(index[~valid].tolist()) - set(index[valid].tolist())
    text = [n for n, p in model.named_parameters()
            if n.startswith('text_encoder.') and p.requires_grad]
    assert text and all(grads_all[n].abs().max() > 0 for n in text)
    assert grads_all.keys() == grads_sel.keys()
    eps = torch.finfo(torch.float32).eps
    # the BCE is a mean over 2 images x K slots x 64 x 64 pixels
    terms = 2 * len(CLASSES) * 64 * 64
    assert loss_sel.item() == pytest.approx(
        loss_all.item(), rel=4 * eps * math.sqrt(terms))
    # a text-tower gradient sums over prompts x context tokens (77)
    reduction = len(CLASSES) * len(TEMPLATES) * 77 + terms
    for name, grad in grads_all.items():
        tol = 4 * eps * math.sqrt(reduction) * float(grad.abs().max())
        torch.testing.assert_close(grads_sel[name], grad, rtol=0, atol=tol,
                                   msg=name)


def test_selected_text_gradients_encode_only_the_packed_classes():
    """The tower runs once without gradients over the vocabulary and once
    with gradients over the prompts of the batch's packed classes."""
    model = build(head=head_cfg(category_selection=NARROW))
    model.train()
    calls = count_tower_rows(model)
    subsets = spy_subsets(model)
    images, data_samples = batch()
    prompts = len(CLASSES) * len(TEMPLATES)

    loss_and_grads(model, 'all', images, data_samples)
    assert sum(n for n, grad in calls if grad) == prompts
    calls.clear()
    loss_and_grads(model, 'selected', images, data_samples)
    with_grad = sum(n for n, grad in calls if grad)
    assert sum(n for n, grad in calls if not grad) == prompts
    assert with_grad == len(subsets[0]) * len(TEMPLATES) < prompts

    # the re-embedded classes are those of the packed slots of the batch
    index, _ = packed_slots(model, images, data_samples)
    assert subsets[-1] == torch.unique(index).tolist()


def test_text_gradients_selected_only_where_it_applies():
    """'all', no category selection, inference or a frozen text tower:
    the embeddings come as today (with the tower's gradients when it
    trains, no re-embedding)."""
    model = build(head=head_cfg(category_selection=NARROW))
    model.train()
    text = model.text_inputs()
    assert text.embed_classes is not None
    assert not text.embeddings.requires_grad
    model.decode_head.text_gradients = 'all'
    text = model.text_inputs()
    assert text.embed_classes is None and text.embeddings.requires_grad
    model.decode_head.text_gradients = 'selected'
    model.eval()
    assert model.text_inputs().embed_classes is None
    model.train()
    with torch.no_grad():
        assert model.text_inputs().embed_classes is None

    model = build(head=head_cfg(category_selection=None))
    model.train()
    assert not model.decode_head.embeds_selected_text
    text = model.text_inputs()
    assert text.embed_classes is None and text.embeddings.requires_grad

    model = build(head=head_cfg(category_selection=NARROW),
                  text_encoder=dict(freeze='all', templates=TEMPLATES))
    model.train()
    assert model.text_inputs().embed_classes is None
    with pytest.raises(OVSSConfigError, match='text_gradients'):
        build(head=head_cfg(text_gradients='some'))


def test_with_gradients_keeps_the_values():
    """Rows re-embedded with gradients keep the values the selection saw;
    the text encoder's cache and bank settings are restored."""
    model = build(head=head_cfg(category_selection=NARROW))
    model.train()
    encoder = model.text_encoder
    settings = (encoder.cache_size, encoder.text_bank_dir)
    text = model.text_inputs()
    assert (encoder.cache_size, encoder.text_bank_dir) == settings
    ids = torch.tensor([1, 4])
    full = text.with_gradients(ids)
    assert full.embed_classes is None
    assert torch.equal(full.embeddings, text.embeddings)
    assert torch.equal(full.template_embeddings, text.template_embeddings)
    assert full.embeddings.requires_grad
    full.template_embeddings.sum().backward()
    tower = [p for n, p in encoder.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for p in tower)
