"""Cross-attention maps and their GradCAM from a transformers BLIP ITM model.

For a caption (text queries) and an image (keys/values), layer L of BLIP's
text encoder attends from every text token to the 1 + P image tokens. PnP-OVSS
(§3.1, Eq. 1) sharpens the attention M of one head with the gradient of the
image-text-matching decision:

    M~ = max(0, dL_ITM / dM) (x) M,

where L_ITM is the raw "match" logit (ITM head output index 1, as the
authors' ``compute_gradcam``: ``output[:, 1].sum()`` in ``Files to replace for
BLIP/blip_image_text_matching.py`` of letitiabanana/PnP-OVSS; the gradient of
a cross-entropy loss would have the opposite sign). The image CLS column is
dropped, leaving a map over the P patches.

Table 6 of the paper also scores the maps "averaged across all heads in a
layer": ``head=None`` averages the per-head GradCAM maps over the heads of
the layer (the authors' ``gradcam_mean = torch.mean(gradcams, 1)`` in
``compute_gradcam``), or the attention maps without GradCAM.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from mmseg_ovss.blip.caption import enc_token_id_of
from mmseg_ovss.utils.errors import OVSSConfigError

ITM_MATCH_INDEX = 1


@dataclass
class TokenMaps:
    """Per-token maps of one (images x chunks) batch.

    Attributes:
        attention: (B, C, T, P) attention probabilities of the chosen head to
            the image patches (CLS column dropped).
        gradcam: (B, C, T, P) ``attention * clamp(grad, min=0)``, or None
            when gradients were not requested.
        itm_logits: (B, C) raw ITM match logits.
    """
    attention: Tensor
    gradcam: Optional[Tensor]
    itm_logits: Tensor


class BlipCrossAttention(nn.Module):
    """Runs BLIP ITM and captures one cross-attention layer.

    Args:
        model: a ``transformers.BlipForImageTextRetrieval``.
        layer: 0-based index of the text-encoder layer.
        head: 0-based index of the attention head; None averages the maps
            of all heads of the layer (Table 6, "Layer Mean").
    """

    def __init__(self, model, layer: int, head: int):
        super().__init__()
        self.model = model
        self.layer = layer
        self.head = head

    #: name of the model in messages
    vlm_name = 'BLIP text encoder'

    @property
    def num_layers(self) -> int:
        """Layers with text-to-image cross-attention."""
        return self.model.config.text_config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.model.config.text_config.num_attention_heads

    @property
    def max_text_tokens(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    def caption_start_id(self, tokenizer) -> int:
        """BLIP's [ENC] token opens an ITM caption."""
        return enc_token_id_of(tokenizer,
                               self.model.config.text_config.vocab_size)

    @property
    def layer(self) -> int:
        return self._layer

    @layer.setter
    def layer(self, value: int) -> None:
        n = self.num_layers
        if not 0 <= value < n:
            raise OVSSConfigError(
                f'cross-attention layer {value + 1} (1-based) does not exist: '
                f'the {self.vlm_name} has layers 1..{n}.')
        self._layer = int(value)

    @property
    def head(self) -> int:
        return self._head

    @head.setter
    def head(self, value: Optional[int]) -> None:
        if value is None:
            self._head = None
            return
        n = self.num_heads
        if not 0 <= value < n:
            raise OVSSConfigError(
                f'cross-attention head {value + 1} (1-based) does not exist: '
                f'the {self.vlm_name} has heads 1..{n} (or "mean" for the '
                'mean over all heads).')
        self._head = int(value)

    @property
    def patch_size(self) -> int:
        return self.model.config.vision_config.patch_size

    def encode_image(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) normalised pixels -> (B, 1 + P, D) ViT tokens.

        Position embeddings are always interpolated to the input's patch grid
        (the paper's Table 3 runs the 384-pixel ViT at 224 to 768 pixels; the
        authors' ``interpolate_pos_embed`` in ``Files to replace for
        BLIP/vit.py``).
        """
        out = self.model.vision_model(
            pixel_values=pixels, interpolate_pos_encoding=True)
        return out.last_hidden_state

    @contextmanager
    def _capture(self, store: dict):
        module = self.model.text_encoder.encoder.layer[
            self.layer].crossattention.self

        def hook(_module, _inputs, outputs):
            store['probs'] = outputs[1]

        handle = module.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def itm_logits(self, image_embeds: Tensor, input_ids: Tensor,
                   attention_mask: Tensor) -> Tensor:
        """Raw ITM logits (N, 2) of paired image tokens and captions."""
        image_atts = torch.ones(
            image_embeds.shape[:-1], dtype=torch.long,
            device=image_embeds.device)
        hidden = self.model.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts).last_hidden_state
        return self.model.itm_head(hidden[:, 0, :])

    def token_maps(self, image_embeds: Tensor, input_ids: Tensor,
                   attention_mask: Tensor, with_gradcam: bool = True,
                   grad_inputs: Optional[Tensor] = None) -> TokenMaps:
        """Attention (and GradCAM) of every caption token on every image.

        Args:
            image_embeds: (B, 1 + P, D) ViT tokens; every image is paired with
                every one of the C captions in one batch of B * C.
            input_ids, attention_mask: (C, T) caption chunks.
            with_gradcam: compute the gradient of the match logit.
            grad_inputs: extra tensors to differentiate too (the pixels when
                the image encoder's backward is on, as the authors ran it);
                this costs time only, the maps are the same.
        """
        num_images, num_tokens = image_embeds.shape[:2]
        num_chunks, length = input_ids.shape
        ids = input_ids.repeat(num_images, 1)
        mask = attention_mask.repeat(num_images, 1)
        store = {}
        with torch.enable_grad():
            embeds = image_embeds.repeat_interleave(num_chunks, dim=0)
            if with_gradcam and not embeds.requires_grad:
                # Exact without the ViT graph: the maps only need the text
                # side, which runs from the (detached) image tokens.
                embeds = embeds.detach().requires_grad_(True)
            with self._capture(store):
                logits = self.itm_logits(embeds, ids, mask)[:, ITM_MATCH_INDEX]
            probs = store['probs']
            heads = (slice(None) if self.head is None
                     else slice(self.head, self.head + 1))
            attention = probs[:, heads, :, 1:]
            gradcam = None
            if with_gradcam:
                inputs = [probs] + ([grad_inputs] if grad_inputs is not None
                                    else [])
                grads = torch.autograd.grad(logits.sum(), inputs)
                grad = grads[0][:, heads, :, 1:]
                # per head, then the mean over the selected head(s)
                gradcam = (attention * grad.clamp(min=0)).mean(1).detach()
            attention = attention.mean(1)
        shape = (num_images, num_chunks, length, num_tokens - 1)
        return TokenMaps(
            attention=attention.detach().reshape(shape),
            gradcam=None if gradcam is None else gradcam.reshape(shape),
            itm_logits=logits.detach().reshape(num_images, num_chunks))
