"""open_clip's text tower as a registered, frozen or trainable module.

Prompt ensembling as in CLIP (Radford et al., 2021, Sec. 3.1.4): a query's
embedding is the normalised mean over the templates of the normalised
prompt embeddings (:mod:`mmseg_ovss.clip.text_encoder`). Trainable text
towers (CAT-Seg's attention fine-tuning, ``KU-CVLAB/CAT-Seg``
cat_seg_model.py) use the (Q, T, D) per-template embeddings directly.
"""
import fnmatch
from typing import Optional, Sequence, Union

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from mmseg_ovss.clip.features import VocabularyEmbeddings
from mmseg_ovss.clip.freeze import apply_freeze_policy, keep_frozen_in_eval
from mmseg_ovss.clip.loading import DEFAULT_RANDOM_INIT_SEED, build_clip_model
from mmseg_ovss.clip.templates import TemplateSpec
from mmseg_ovss.clip.text_encoder import (TEXT_TOWER_PARTS,
                                          PromptEnsembleEncoding,
                                          build_tokenizer, text_tower_of,
                                          weights_version_key)
from mmseg_ovss.clip.vocabulary import Vocabulary

#: Attributes of open_clip's ``CLIP`` that describe its text tower.
TEXT_TOWER_ATTRIBUTES = ('text_pool_type', 'text_eos_id', 'context_length',
                         'vocab_size')


@MODELS.register_module()
class OpenCLIPTextEncoder(BaseModule, PromptEnsembleEncoding):
    """The text tower of an open_clip model, with prompt templates.

    The weights come from :func:`~mmseg_ovss.clip.loading.build_clip_model`
    (the image tower is dropped). Of a ``CLIP`` model the module keeps
    ``token_embedding``, ``positional_embedding``, ``transformer``,
    ``ln_final``, ``text_projection``, the causal ``attn_mask`` buffer and
    ``logit_scale`` under open_clip's names (state-dict keys as in a CLIP
    checkpoint, without ``visual.``); of a ``CustomTextCLIP`` its ``text``
    module and ``logit_scale``.

    Embeddings are computed with gradients when a text-tower parameter is
    trainable and grad mode is on; otherwise under ``no_grad`` and cached
    (:class:`~mmseg_ovss.clip.text_encoder.PromptEnsembleEncoding`). The
    on-disk bank is used only while the tower computes without gradients
    and has not computed with them in this process (a tower in training
    never banks; a trained checkpoint under test does).

    Args:
        model_name, pretrained, checkpoint, precision, random_init, seed,
            quick_gelu, cache_dir, trusted: the weights, as
            :func:`~mmseg_ovss.clip.loading.build_clip_model` takes them.
        templates: ``'openai'`` (80), ``'vild'`` (15), ``'single'``,
            ``'simple'``, a list of ``'{}'`` strings or a ``.txt`` file.
        freeze: ``'all'`` (default), ``'none'`` or ``'attn_qv'``
            (:func:`~mmseg_ovss.clip.freeze.apply_freeze_policy`).
        trainable: fnmatch patterns of parameter names that train in
            addition (e.g. ``'ln_final.*'``). ``logit_scale`` trains only
            when a pattern names it, whatever the policy.
        batch_size: sentences per text-tower call.
        cache_size: vocabularies kept in memory (0: none).
        truncate_context: run the tower only up to the longest prompt of a
            batch (exact for causal towers pooling at end-of-text).
        text_bank: keep the embedding of every sentence on disk while
            the tower is not being trained, so a second start reads
            it back instead of encoding (:mod:`mmseg_ovss.clip.text_bank`):
            ``'auto'``
            (default: ``$OVSS_TEXT_BANK``, or
            ``~/.cache/mmseg_ovss/text_bank``; ``OVSS_TEXT_BANK=off``
            disables it), a folder, or None (off).
        init_cfg: mmengine's init config.
    """

    def __init__(self,
                 model_name: str = 'ViT-B-16',
                 pretrained: Optional[str] = None,
                 checkpoint: Optional[str] = None,
                 precision: str = 'fp32',
                 random_init: bool = False,
                 seed: Optional[int] = DEFAULT_RANDOM_INIT_SEED,
                 templates: TemplateSpec = 'openai',
                 freeze: str = 'all',
                 trainable: Sequence[str] = (),
                 batch_size: int = 256,
                 cache_size: int = 8,
                 truncate_context: bool = True,
                 text_bank: Optional[str] = 'auto',
                 quick_gelu: Optional[bool] = None,
                 cache_dir: Optional[str] = None,
                 trusted: bool = False,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        model = build_clip_model(
            model_name, pretrained=pretrained, checkpoint=checkpoint,
            precision=precision, random_init=random_init,
            quick_gelu=quick_gelu, cache_dir=cache_dir, seed=seed,
            trusted=trusted)
        self._keep_text_tower(model)
        del model  # the image tower goes with it
        self.model_name = model_name
        self.setup_encoding(build_tokenizer(model_name, self.context_length),
                            templates, batch_size, cache_size,
                            truncate_context, text_bank)
        if isinstance(trainable, str):
            trainable = [trainable]
        self.freeze = freeze
        self.trainable = tuple(trainable)
        apply_freeze_policy(self, freeze, self.trainable)
        if not any(fnmatch.fnmatchcase('logit_scale', pattern)
                   for pattern in self.trainable):
            self._parameters['logit_scale'].requires_grad_(False)
        self.train(self.training)

    def _keep_text_tower(self, model: nn.Module) -> None:
        """Take the text tower's modules and ``logit_scale`` from ``model``."""
        tower = text_tower_of(model)
        if tower is model:  # open_clip CLIP: the parts are attributes
            for name in TEXT_TOWER_PARTS[:-1]:
                setattr(self, name, getattr(model, name))
            self.register_buffer('attn_mask', model.attn_mask,
                                 persistent=False)
            for name in TEXT_TOWER_ATTRIBUTES:
                setattr(self, name, getattr(model, name, None))
        else:  # CustomTextCLIP: the tower is a module
            self.text = tower
            self.context_length = getattr(model, 'context_length', None)
        # the parameter is CLIP's log temperature; the attribute is its exp
        self.register_parameter('logit_scale', model.logit_scale)

    # ------------------------------------------------------------ tower
    @property
    def text_tower(self) -> nn.Module:
        """The module holding the tower's parts: this module for a CLIP
        model, ``self.text`` for a CustomTextCLIP one."""
        text = self._modules.get('text')
        return self if text is None else text

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's temperature ``exp(logit_scale)`` as a 0-dim float32 tensor
        (100 for OpenAI CLIP; FreeCP's Eq. 1). The parameter itself is
        CLIP's log value, state-dict key and parameter name
        ``logit_scale`` (``dict(self.named_parameters())['logit_scale']``).
        """
        log_scale = self._parameters.get('logit_scale')
        if log_scale is None:  # during __init__, before it is registered
            raise AttributeError('logit_scale')
        return log_scale.float().exp().reshape(())

    def _tower_parameters(self):
        return (p for name, p in self.named_parameters()
                if name != 'logit_scale')

    def weights_key(self) -> tuple:
        return weights_version_key((*self.parameters(), *self.buffers()))

    def tracks_gradients(self) -> bool:
        return torch.is_grad_enabled() and any(
            p.requires_grad for p in self._tower_parameters())

    # ---------------------------------------------------------- modes
    def train(self, mode: bool = True) -> 'OpenCLIPTextEncoder':
        """Frozen parts stay in eval mode (``frozen_submodules``)."""
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self)
        return self

    def _apply(self, fn, *args, **kwargs):
        # a move or cast gives the weights new storage; the versions of the
        # cache key would tell, but a freed address can be reused
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    # --------------------------------------------------------- forward
    def forward(self, queries: Union[Sequence[str], Vocabulary]
                ) -> Union[Tensor, VocabularyEmbeddings]:
        """(Q, T, D) per-template embeddings of query strings
        (:meth:`encode_templates`); a :class:`Vocabulary` gives its
        :meth:`embed_vocabulary`."""
        if isinstance(queries, Vocabulary):
            return self.embed_vocabulary(queries)
        return self.encode_templates(queries)

    def extra_repr(self) -> str:
        return (f'model_name={self.model_name!r}, templates='
                f'{len(self.templates)}, freeze={self.freeze!r}, '
                f'trainable={self.trainable}')
