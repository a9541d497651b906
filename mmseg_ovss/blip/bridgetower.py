"""BridgeTower as the VLM of PnP-OVSS (Luo et al., CVPR 2024, §4, Tables 2-3).

BridgeTower (Xu et al., AAAI 2023) has a cross-modal encoder of 6 layers on
top of a CLIP ViT and a RoBERTa text encoder; the last 6 layers of both
uni-modal encoders feed the cross-modal layers through "bridge" layers. Each
cross-modal text layer attends from the caption tokens to the image tokens
(CLS + patches): PnP-OVSS takes one head of one of these layers (Table 2:
layer 2, head 8, searched over layers 1-6 and heads 1-16, i.e. BridgeTower
large) and weights it with the gradient of the ITM "match" logit (Eq. 1),
exactly as with BLIP (:mod:`mmseg_ovss.blip.cross_attention`).

The model is transformers' ``BridgeTowerForImageAndTextRetrieval`` (its ITM
head on the concatenated text and image pooler outputs, index 1 = match).
Its image encoder runs inside the cross-modal forward (the bridges), so
:meth:`BridgeTowerCrossAttention.encode_image` passes the pixels on and
every image-caption pair runs the whole model. Position embeddings are
always interpolated to the input's patch grid (the paper runs 322 to 770
pixels). Without ``image_encoder_grad`` the gradient graph starts at the
query input of the chosen cross-attention layer (the maps only need the
gradient of the logit with respect to that layer's attention, which comes
from the layers after it): exact, and no backward through the encoders.

The authors have not released their BridgeTower code (their README: "Only
the code for PnP-OVSS + BLIP is provided"); everything else (caption,
Salience DropOut, post-processing) is shared with BLIP.
"""
import os.path as osp
from contextlib import contextmanager
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from mmseg_ovss.blip.cross_attention import ITM_MATCH_INDEX, TokenMaps
from mmseg_ovss.blip.loading import _from_hub
from mmseg_ovss.clip.loading import hub_offline
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSWeightsError

#: BridgeTower checkpoints with an ITM head. The paper's search space (6
#: layers, 16 heads) and its 14-pixel multiples (322, 336, 770) are those of
#: BridgeTower large (ViT-L/14).
BRIDGETOWER_ITM_MODELS = {
    'large-itm': 'BridgeTower/bridgetower-large-itm-mlm-itc',
    'base-itm': 'BridgeTower/bridgetower-base-itm-mlm',
}


def resolve_bridgetower_name(name: str) -> str:
    return BRIDGETOWER_ITM_MODELS.get(name, name)


def _fetch_hint(name: str) -> str:
    return (f'Without network access, download them elsewhere with '
            f'`huggingface-cli download {resolve_bridgetower_name(name)} '
            '--local-dir <folder>`, copy the folder here and set '
            "`model.bridgetower.pretrained='<folder>'` in the config.")


def load_bridgetower_itm(pretrained: Union[str, None] = 'large-itm',
                         config: Optional[dict] = None,
                         tokenizer: Optional[str] = None,
                         local_files_only: Optional[bool] = None,
                         seed: Optional[int] = 0) -> Tuple:
    """Return ``(BridgeTowerForImageAndTextRetrieval, tokenizer)``, eval.

    Args:
        pretrained: hub id, alias of :data:`BRIDGETOWER_ITM_MODELS` or a
            local folder; None builds random weights from ``config``.
        config: ``BridgeTowerConfig`` keyword arguments (``pretrained``
            None), e.g. :func:`mmseg_ovss.testing.tiny_bridgetower.
            tiny_bridgetower_config`.
        tokenizer: tokenizer folder or hub id (default: ``pretrained``);
            required for random weights.
        local_files_only: never contact the hub (default: ``HF_HUB_OFFLINE``).
        seed: seed of random weights; the global RNG is left alone.
    """
    from transformers import (AutoTokenizer, BridgeTowerConfig,
                              BridgeTowerForImageAndTextRetrieval)
    if local_files_only is None:
        local_files_only = hub_offline()
    if pretrained is None:
        if config is None or tokenizer is None:
            raise OVSSConfigError(
                'a randomly initialised BridgeTower needs `config` '
                '(BridgeTowerConfig arguments) and `tokenizer` (a RoBERTa '
                'tokenizer folder, e.g. from mmseg_ovss.testing.'
                'tiny_bridgetower).')
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = BridgeTowerForImageAndTextRetrieval(
                BridgeTowerConfig(**config))
    else:
        name = osp.expanduser(resolve_bridgetower_name(pretrained))
        looks_local = (name.startswith(('/', '.', '~')) or name.count('/') > 1
                       or osp.isdir(name))
        if looks_local and not osp.isdir(name):
            raise OVSSWeightsError(
                f'BridgeTower folder "{name}" does not exist. Pass a folder '
                'holding config.json, the weights and the tokenizer files, '
                'or a hub id such as '
                f'"{BRIDGETOWER_ITM_MODELS["large-itm"]}".')
        try:
            model = _from_hub(
                lambda local_only: BridgeTowerForImageAndTextRetrieval.
                from_pretrained(name, local_files_only=local_only), name,
                local_files_only, 'BridgeTower ITM', _fetch_hint)
        except OVSSWeightsError:
            raise
        except (OSError, ValueError, RuntimeError) as err:
            raise OVSSWeightsError(
                f'cannot load the BridgeTower ITM weights "{name}" '
                f'({type(err).__name__}: {err}). ' + _fetch_hint(name)
            ) from err
        tokenizer = tokenizer or name
    try:
        tok = _from_hub(lambda local_only: AutoTokenizer.from_pretrained(
            tokenizer, local_files_only=local_only), tokenizer,
            local_files_only, 'BridgeTower tokenizer', _fetch_hint)
    except OVSSWeightsError:
        raise
    except (OSError, ValueError) as err:
        raise OVSSWeightsError(
            f'cannot load the BridgeTower tokenizer "{tokenizer}" '
            f'({type(err).__name__}: {err}). ' + _fetch_hint(tokenizer)
        ) from err
    model.eval()
    model.requires_grad_(False)
    return model, tok


class BridgeTowerCrossAttention(nn.Module):
    """Runs BridgeTower ITM and captures one cross-modal text layer.

    Args:
        model: a ``transformers.BridgeTowerForImageAndTextRetrieval``.
        layer: 0-based cross-modal layer (0..5).
        head: 0-based head; None averages the maps of all heads.
    """

    vlm_name = 'BridgeTower cross-modal encoder'

    def __init__(self, model, layer: int, head: Optional[int]):
        super().__init__()
        self.model = model
        self.layer = layer
        self.head = head

    @property
    def _layers(self) -> nn.ModuleList:
        return self.model.bridgetower.cross_modal_text_layers

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def num_heads(self) -> int:
        return self._layers[0].crossattention.self.num_attention_heads

    @property
    def max_text_tokens(self) -> int:
        """RoBERTa positions start after the padding index."""
        text_cfg = self.model.config.text_config
        return text_cfg.max_position_embeddings - text_cfg.pad_token_id - 1

    @property
    def patch_size(self) -> int:
        return self.model.config.vision_config.patch_size

    def caption_start_id(self, tokenizer) -> int:
        """RoBERTa's ``<s>`` opens the ITM caption."""
        return int(tokenizer.cls_token_id)

    @property
    def layer(self) -> int:
        return self._layer

    @layer.setter
    def layer(self, value: int) -> None:
        if not 0 <= value < self.num_layers:
            raise OVSSConfigError(
                f'cross-attention layer {value + 1} (1-based) does not exist: '
                f'the {self.vlm_name} has layers 1..{self.num_layers}.')
        self._layer = int(value)

    @property
    def head(self) -> Optional[int]:
        return self._head

    @head.setter
    def head(self, value: Optional[int]) -> None:
        if value is not None and not 0 <= value < self.num_heads:
            raise OVSSConfigError(
                f'cross-attention head {value + 1} (1-based) does not exist: '
                f'the {self.vlm_name} has heads 1..{self.num_heads} (or '
                '"mean" for the mean over all heads).')
        self._head = None if value is None else int(value)

    def encode_image(self, pixels: Tensor) -> Tensor:
        """The pixels: BridgeTower encodes them inside its cross-modal
        forward (:meth:`token_maps`)."""
        return pixels

    @contextmanager
    def _capture(self, store: dict, start_graph: bool):
        module = self._layers[self.layer].crossattention.self

        def pre_hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs['hidden_states']
            if not start_graph or hidden.requires_grad:
                return None
            hidden = hidden.detach().requires_grad_(True)
            if args:
                return (hidden, ) + tuple(args[1:]), kwargs
            return args, {**kwargs, 'hidden_states': hidden}

        def hook(_module, _inputs, outputs):
            store['probs'] = outputs[1]

        handles = [module.register_forward_pre_hook(pre_hook,
                                                    with_kwargs=True),
                   module.register_forward_hook(hook)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def itm_logits(self, pixels: Tensor, input_ids: Tensor,
                   attention_mask: Tensor) -> Tensor:
        """Raw ITM logits (N, 2) of paired images and captions."""
        out = self.model.bridgetower(
            input_ids=input_ids, attention_mask=attention_mask,
            pixel_values=pixels, interpolate_pos_encoding=True)
        return self.model.itm_score(out.pooler_output)

    def token_maps(self, image_embeds: Tensor, input_ids: Tensor,
                   attention_mask: Tensor, with_gradcam: bool = True,
                   grad_inputs: Optional[Tensor] = None) -> TokenMaps:
        """Attention (and GradCAM) of every caption token on every image.

        Args:
            image_embeds: (B, 3, H, W) pixels (:meth:`encode_image`), each
                paired with every one of the C caption chunks.
            input_ids, attention_mask: (C, T) caption chunks.
            with_gradcam: compute the gradient of the match logit.
            grad_inputs: the pixels when the image encoder's backward is on
                (``image_embeds`` itself then requires grad).
        """
        num_images = image_embeds.shape[0]
        num_chunks, length = input_ids.shape
        ids = input_ids.repeat(num_images, 1)
        mask = attention_mask.repeat(num_images, 1)
        store = {}
        with torch.enable_grad():
            pixels = image_embeds.repeat_interleave(num_chunks, dim=0)
            with self._capture(store, with_gradcam):
                logits = self.itm_logits(pixels, ids, mask)[:, ITM_MATCH_INDEX]
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
                gradcam = (attention * grad.clamp(min=0)).mean(1).detach()
            attention = attention.mean(1)
        num_patches = attention.shape[-1]
        shape = (num_images, num_chunks, length, num_patches)
        return TokenMaps(
            attention=attention.detach().reshape(shape),
            gradcam=None if gradcam is None else gradcam.reshape(shape),
            itm_logits=logits.detach().reshape(num_images, num_chunks))
