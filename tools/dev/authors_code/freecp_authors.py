"""The FreeCP authors' segmentor, run unmodified on a CPU, for
``side_by_side.py --method freecp``.

The authors' ``freecp_segmentor.py`` (chenqi1126/FreeCP,
``FreeCPSegmentation``) is imported from a local clone and left as it is.
Only what cannot run on this machine is replaced, from outside and for the
duration of their calls (see ``README.md`` next to this file):

- their vendored ``open_clip.factory.load_openai_model`` (which downloads
  OpenAI's weights) reads the exported weights file instead, in float32
  (their code asks for fp16);
- ``torch.Tensor.cuda`` returns the tensor itself (their ``refinement`` and
  ``predict`` create CUDA tensors);
- ``torch.Tensor.half`` returns the tensor itself (``CLIP.cam`` in their
  ``open_clip/model.py`` casts the image to the fp16 model's dtype; the
  model here is float32);
- their ``open_clip`` package is swapped into ``sys.modules`` while their
  code runs, because the package itself uses the pip ``open_clip``
  under the same name;
- their ``open_clip/tokenizer.py`` reads ``bpe_simple_vocab_16e6.txt.gz``
  from its own folder, which the clone lacks (the file is not in their
  repository): while their code is imported and built, ``gzip.open`` of
  that path opens the same OpenAI BPE file of the pip ``open_clip``;
- their ``predict`` reads the ground-truth PNG next to the image path:
  each image gets an all-zero PNG of its size in a temporary folder (for
  ``dataset='ade'`` the labels are read and resized but not used).

Their text sources are module globals, set to the same text as ours: the
prompt templates (``openai_imagenet_template``) and the class descriptions
(``ADE20K``, read by their ``get_prompts`` for ``dataset='ade'``), which
become our description file's sentences for the chosen names.
"""
import contextlib
import gzip
import importlib
import os.path as osp
import sys
from pathlib import Path
from typing import Dict, List, Mapping, MutableMapping, Sequence

import numpy as np
import torch

#: Side of the crops their ``ambiguity_purification`` classifies (it
#: resizes every box to 112 x 112 before ``self.net.cam``).
AUTHORS_CROP_SIDE = 112
#: The BPE vocabulary their tokenizer reads from its folder.
BPE_FILE = 'bpe_simple_vocab_16e6.txt.gz'
#: Top-level packages of the clone that the environment also has.
AUTHORS_PACKAGES = ('open_clip', )
#: Our dense strategies and the ``model_type`` of the authors' code that
#: computes the same attention (``open_clip/transformer.py``
#: ``custom_attn``; GEM: ``open_clip/gem``).
MODEL_TYPES = {'GEM': 'GEM', 'SCLIP': 'SCLIP', 'ClearCLIP': 'ClearCLIP',
               'MaskCLIP': 'MaskCLIP'}
#: Their ``vit_type`` (read for the patch size of the crop boxes) per
#: open_clip architecture.
VIT_TYPES = {'ViT-B-16': 'ViT-B/16', 'ViT-L-14': 'ViT-L-14'}


@contextlib.contextmanager
def patched_attributes(target, **values):
    """Set attributes of ``target`` (a module or a class) for the duration
    of the block, then put back what was there: the same object, or, for
    an attribute ``target`` inherited, nothing of its own."""
    own = {name: vars(target)[name] for name in values
           if name in vars(target)}
    for name, value in values.items():
        setattr(target, name, value)
    try:
        yield
    finally:
        for name in values:
            if name in own:
                setattr(target, name, own[name])
            else:
                delattr(target, name)


def _owned(name: str, packages: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + '.') for p in packages)


@contextlib.contextmanager
def swapped_modules(packages: Sequence[str],
                    store: MutableMapping[str, object]):
    """Within the block, ``sys.modules`` holds the modules of ``packages``
    kept in ``store`` (none the first time, so an import finds the first
    folder on ``sys.path``) instead of the ones loaded before; on exit
    ``store`` keeps the modules of ``packages`` loaded within and the
    earlier ones come back."""
    before = {n: m for n, m in sys.modules.items() if _owned(n, packages)}
    for name in before:
        del sys.modules[name]
    sys.modules.update(store)
    try:
        yield
    finally:
        store.clear()
        store.update({n: m for n, m in sys.modules.items()
                      if _owned(n, packages)})
        for name in store:
            del sys.modules[name]
        sys.modules.update(before)


def _same_tensor(tensor, *args, **kwargs):
    return tensor


@contextlib.contextmanager
def redirected_gzip(missing: str, present: str):
    """``gzip.open(missing)`` opens ``present`` instead within the block
    (nothing changes when ``missing`` exists)."""
    if osp.isfile(missing):
        yield
        return
    open_gzip = gzip.open

    def redirected(filename, *args, **kwargs):
        if isinstance(filename, (str, Path)) and \
                osp.abspath(filename) == osp.abspath(missing):
            filename = present
        return open_gzip(filename, *args, **kwargs)

    with patched_attributes(gzip, open=redirected):
        yield


def authors_description_table(descriptions, names: Sequence[str]
                              ) -> Dict[str, List[str]]:
    """``{name: sentences}`` for their ``get_prompts`` (the format of their
    ``prompts/vicuna13b/ade20k.py`` ``ADE20K``), with the sentences our
    FreeCP head gives each name: ``descriptions`` is the head's setting
    (a description file or ``dict(path=..., deduplicate=...)``)."""
    from mmseg_ovss.freecp.descriptions import (load_descriptions,
                                                match_descriptions)
    table = load_descriptions(descriptions)
    matched = match_descriptions([[name] for name in names], table)
    missing = [n for n, sentences in zip(names, matched) if not sentences]
    if missing:
        raise SystemExit(
            f'description file {descriptions!r} has no sentences for '
            f'{missing[:5]}: the authors\' get_prompts would fail on them '
            '(ours would fall back to templates). Add the classes to the '
            'file or choose fewer --num-classes.')
    return dict(zip(names, matched))


def write_label_png(folder: str, index: int, height: int, width: int) -> str:
    """Write an all-zero ``height`` x ``width`` label PNG where their
    ``predict`` looks for the ground truth of an ADE image
    (``img_path`` with ``images`` -> ``annotations`` and ``jpg`` ->
    ``png``) and return that image path (the image file is not read)."""
    from PIL import Image
    image_path = osp.join(folder, 'images', f'{index}.jpg')
    label_path = image_path.replace('images', 'annotations').replace(
        'jpg', 'png')
    Path(label_path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width), np.uint8)).save(label_path)
    return image_path


def threshold_config(config: str, path: str, rp_threshold=None,
                     ap_threshold=None) -> str:
    """Write a config inheriting ``config`` with the given FreeCP
    thresholds (None keeps the config's); returns its path."""
    overrides = {}
    if rp_threshold is not None:
        overrides['rp_threshold'] = float(rp_threshold)
    if ap_threshold is not None:
        overrides['ap_threshold'] = float(ap_threshold)
    Path(path).write_text(
        f'_base_ = [{osp.abspath(config)!r}]\n'
        f'model = dict(decode_head=dict(**{overrides!r}))\n')
    return path


@contextlib.contextmanager
def counting_our_crops(counts: Dict[str, int]):
    """Count the boxes of our ambiguity purification (``boxes``) and those
    given a winner by a crop (``classified``) into ``counts``."""
    import mmseg_ovss.freecp.pipeline as pipeline
    classify = pipeline.classify_group_crops

    def counted(*args, **kwargs):
        votes = classify(*args, **kwargs)
        counts['boxes'] += int(votes.group.numel())
        counts['classified'] += int((votes.winner >= 0).sum())
        return votes

    with patched_attributes(pipeline, classify_group_crops=counted):
        yield


class FreeCPAuthors:
    """The authors' ``FreeCPSegmentation`` on the same weights, names,
    windows, thresholds and text as our config.

    Args:
        repo: local clone of chenqi1126/FreeCP.
        weights: OpenAI-format float32 state dict (``side_by_side.py``
            ``export_openai_weights``).
        names: one name per class (written to their name file).
        model_name: open_clip architecture of the weights.
        strategy: our dense strategy's type (its ``model_type`` there).
        crop, stride: sliding windows.
        rp_threshold, ap_threshold: their ``rp_thres`` / ``ap_thres``.
        templates: ``'single'`` ('a photo of a {}.') or ``'openai'`` (their
            80 templates, as ours).
        descriptions: our head's description setting.
        workdir: a temporary folder (name file, label PNGs).
    """

    def __init__(self, repo: str, weights: str, names: Sequence[str],
                 model_name: str, strategy: str, crop: int, stride: int,
                 rp_threshold: float, ap_threshold: float, templates: str,
                 descriptions, workdir: str):
        repo = osp.abspath(repo)
        if not osp.isfile(osp.join(repo, 'freecp_segmentor.py')):
            raise SystemExit(f'--repo {repo}: no freecp_segmentor.py; give '
                             'a local clone of chenqi1126/FreeCP')
        if strategy not in MODEL_TYPES:
            raise SystemExit(
                f'dense strategy {strategy!r} has no counterpart in the '
                f'authors\' code; use a FreeCP config with one of '
                f'{sorted(MODEL_TYPES)}')
        if model_name not in VIT_TYPES:
            raise SystemExit(f'--model-name {model_name!r}: the authors\' '
                             f'code runs {sorted(VIT_TYPES)}')
        self.workdir = workdir
        self.crops = dict(classified=0)
        self._modules: Dict[str, object] = {}
        self._loads: List[tuple] = []
        import open_clip  # the pip package (not yet theirs)
        bpe = (osp.join(repo, 'open_clip', BPE_FILE),
               osp.join(osp.dirname(open_clip.__file__), BPE_FILE))
        with redirected_gzip(*bpe):
            module = self._import(repo)
        if templates == 'single':
            module.openai_imagenet_template = [lambda c: f'a photo of a {c}.']
        module.ADE20K = authors_description_table(descriptions, names)
        name_file = osp.join(workdir, 'names.txt')
        Path(name_file).write_text('\n'.join(names) + '\n')
        with self.running(), self._exported_weights(weights), \
                redirected_gzip(*bpe):
            self.model = module.FreeCPSegmentation(
                clip_type='CLIP', vit_type=VIT_TYPES[model_name],
                model_type=MODEL_TYPES[strategy], name_path=name_file,
                dataset='ade', device='cpu', slide_stride=stride,
                slide_crop=crop, rp_thres=rp_threshold,
                ap_thres=ap_threshold).eval()
        if not self._loads:
            raise RuntimeError('the authors\' code did not load the weights '
                               'through open_clip.load_openai_model')
        dtype = next(self.model.net.parameters()).dtype
        if dtype != torch.float32:
            raise RuntimeError(f'the authors\' model is {dtype}, not float32')
        self._count_crops()

    def _import(self, repo: str):
        sys.path.insert(0, repo)
        try:
            with swapped_modules(AUTHORS_PACKAGES, self._modules):
                return importlib.import_module('freecp_segmentor')
        except ModuleNotFoundError as err:
            raise SystemExit(
                f'the authors\' code needs {err.name!r}, which this '
                'environment lacks: install it outside the project '
                f'environment (pip install --target DIR {err.name}) and '
                'put DIR on PYTHONPATH') from err
        finally:
            sys.path.remove(repo)

    @contextlib.contextmanager
    def _exported_weights(self, weights: str):
        factory = self._modules['open_clip.factory']
        load = factory.load_openai_model

        def load_exported(name, precision=None, device=None,
                          cache_dir=None):
            self._loads.append((name, precision))
            return load(weights, precision='fp32', device=device,
                        cache_dir=cache_dir)

        with patched_attributes(factory, load_openai_model=load_exported):
            yield

    def _count_crops(self):
        net = self.model.net
        cam = net.cam

        def counted(image, *args, **kwargs):
            if tuple(image.shape[-2:]) == (AUTHORS_CROP_SIDE, ) * 2:
                self.crops['classified'] += 1
            return cam(image, *args, **kwargs)

        net.cam = counted

    @contextlib.contextmanager
    def running(self):
        """Their ``open_clip`` in ``sys.modules``; ``.cuda()`` and
        ``.half()`` leave tensors as they are (CPU, float32)."""
        with swapped_modules(AUTHORS_PACKAGES, self._modules), \
                patched_attributes(torch.Tensor, cuda=_same_tensor,
                                   half=_same_tensor):
            yield

    def image_meta(self, index: int, height: int, width: int) -> Dict:
        """The ``img_path`` their ``predict`` derives the label PNG from
        (written here)."""
        return dict(img_path=write_label_png(self.workdir, index, height,
                                             width))

    def take_crops(self) -> Dict[str, int]:
        """Crops classified since the last call."""
        taken = dict(self.crops)
        self.crops['classified'] = 0
        return taken


def freecp_settings(cfg) -> Mapping:
    """Our config's FreeCP head settings the authors' code takes."""
    head = cfg.model.decode_head
    if head.get('type') != 'FreeCPHead':
        raise SystemExit('--method freecp needs a FreeCP config '
                         "(decode_head type 'FreeCPHead'), e.g. "
                         'configs/freecp/gem_ade.py')
    strategy = cfg.model.backbone.dense_strategy.type
    return dict(strategy=strategy, rp_threshold=head.rp_threshold,
                ap_threshold=head.ap_threshold,
                descriptions=head.descriptions)
