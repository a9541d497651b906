"""Segment photographs with any vocabulary and write colour overlays.

    python tools/demo.py                       # the bundled data/samples/*.jpg
    python tools/demo.py photo.jpg --classes background cat "dog, puppy"
    python tools/demo.py --random-init --model-name ovss-tiny-ViT-16  # offline

The model comes from a config (default: SCLIP, ``configs/_base_/models/
clip_sclip.py``); ``--checkpoint`` points at local CLIP weights when they
cannot be downloaded, ``--random-init`` runs the whole path without weights
(the overlay is then meaningless, but every step runs).
A class may list synonyms separated by ", "; a class named "background"
becomes the background class.

PnP-OVSS configs (``configs/pnp_ovss/*.py``) work too: ``--checkpoint``
then names a local BLIP (or BridgeTower) folder, and ``--stages`` writes the
salience maps of every stage of each image into ``<out-dir>/<name>_stages/``
(cross-attention, GradCAM, each Salience-DropOut pass, the sum, threshold,
blur, DenseCRF, labels; docs/visualization.md)::

    python tools/demo.py photo.jpg --config configs/pnp_ovss/blip_voc20.py \
        --classes background cat dog --checkpoint /path/to/blip --stages

Each input ``<name>.<ext>`` gives ``<out-dir>/<name>_overlay.png``. Inputs
that share a name (``a/cat.jpg`` and ``b/cat.jpg``, or ``cat.jpg`` and
``cat.png``) are named after their path below the deepest folder they share,
with "/" and "." replaced by "_": ``a_cat_jpg_overlay.png`` and
``b_cat_jpg_overlay.png``. Arguments out of range, inputs without images and
files that cannot be written are errors.
"""
import argparse
import json
import os
import os.path as osp
import sys
from collections import Counter
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
from mmengine.config import DictAction

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))
from mmseg_ovss.utils.errors import (OVSSConfigError,  # noqa: E402
                                     OVSSDataError, OVSSWeightsError)
from mmseg_ovss.utils.paths import resolve_data_path  # noqa: E402
from mmseg_ovss.visualization.models import (  # noqa: E402
    model_sample)
from mmseg_ovss.visualization.render import (  # noqa: E402
    IMAGE_EXTENSIONS, class_palette, draw_overlay, golden_palette,
    read_image, write_image)

DEFAULT_CONFIG = 'configs/_base_/models/clip_sclip.py'
SAMPLES = 'data/samples'
#: Legend entry of pixels a PnP-OVSS model leaves unlabelled (its
#: background channel, on a vocabulary without a "background" class).
NO_CLASS = '(no class)'
NO_CLASS_BGR = (128, 128, 128)
#: Accepted --short-side values: at least a ViT patch, at most what a
#: sliding-window CLIP model segments in reasonable memory.
SHORT_SIDE_RANGE = (16, 4096)
DEFAULT_SHORT_SIDE = 336


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('images', nargs='*',
                        help='image files or folders (default: data/samples)')
    parser.add_argument('--classes', nargs='+',
                        help='vocabulary, one class per argument ("a, b" '
                        'for synonyms); default: data/samples/'
                        'vocabularies.json for the samples')
    parser.add_argument('--class-file', help='class-name file instead')
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--checkpoint',
                        help='local CLIP weights file; for PnP-OVSS '
                        'configs a local BLIP / BridgeTower folder')
    parser.add_argument('--model-name', help='open_clip architecture')
    parser.add_argument('--random-init', action='store_true',
                        help='random CLIP weights (offline smoke run)')
    parser.add_argument('--short-side', type=int, default=None,
                        help='resize the short side, in pixels (default: '
                        f'{DEFAULT_SHORT_SIDE}; {SHORT_SIDE_RANGE[0]}..'
                        f'{SHORT_SIDE_RANGE[1]})')
    parser.add_argument('--out-dir', default='work_dirs/demo')
    parser.add_argument('--device', default='cpu',
                        help='torch device, e.g. cpu, cuda, cuda:1')
    parser.add_argument('--alpha', type=float, default=0.5,
                        help='opacity of the label colours, 0..1')
    parser.add_argument('--stages', action='store_true',
                        help='PnP-OVSS configs: also write the maps of '
                        'every stage into <out-dir>/<name>_stages/')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        default={}, help='override config keys, e.g. '
                        'model.crf=None')
    return check_arguments(parser.parse_args(argv))


def check_arguments(args):
    """Refuse out-of-range values before the model is built."""
    from mmseg_ovss.clip.vocabulary import Vocabulary
    low, high = SHORT_SIDE_RANGE
    if args.short_side is not None and not low <= args.short_side <= high:
        raise OVSSConfigError(
            f'--short-side {args.short_side} is out of range: give {low}..'
            f'{high} pixels (the configs use 336-560)')
    if not 0.0 <= args.alpha <= 1.0:  # also refuses nan
        raise OVSSConfigError(
            f'--alpha {args.alpha} is out of range: give 0 (image only) .. 1 '
            '(label colours only)')
    if args.classes is not None and args.class_file:
        raise OVSSConfigError(
            'give either --classes or --class-file, not both')
    if args.classes is not None:
        Vocabulary.from_names(args.classes)  # empty / duplicate names
    if args.class_file:
        Vocabulary.from_file(args.class_file)
    resolve_data_path(args.config)
    check_device(args.device)
    return args


def check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise OVSSConfigError(
            f'--device {device!r} is not a torch device; use cpu, cuda or '
            'cuda:N') from err
    if parsed.type == 'cuda':
        count = torch.cuda.device_count()
        if count == 0 or (parsed.index or 0) >= count:
            raise OVSSConfigError(
                f'--device {device}: this machine has {count} CUDA '
                'device(s); use --device cpu or an existing cuda:N')


def collect_images(paths: Sequence[str]) -> List[Path]:
    """The image files of ``paths`` (files, or folders scanned for
    ``IMAGE_EXTENSIONS``), each once, in the order given."""
    if not paths:
        paths = [str(resolve_data_path(SAMPLES))]
    images = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file()
                           and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise OVSSDataError(
                    f'folder {item} holds no image '
                    f'({", ".join(IMAGE_EXTENSIONS)}); pass image files or a '
                    'folder of images')
            images += found
        elif path.is_file():
            images.append(path)
        else:
            raise OVSSDataError(f'image {item!r} does not exist')
    unique = {}
    for image in images:
        unique.setdefault(image.resolve(), image)
    return list(unique.values())


def output_names(images: Sequence[Path]) -> List[str]:
    """``<name>_overlay.png`` per image; images sharing a name are named
    after their path below their deepest common folder ("/", "." -> "_")."""
    counts = Counter(p.stem for p in images)
    groups = {}
    for image in images:
        groups.setdefault(image.stem, []).append(image.resolve())
    names = []
    for image in images:
        if counts[image.stem] == 1:
            names.append(f'{image.stem}_overlay.png')
            continue
        group = groups[image.stem]
        common = Path(osp.commonpath([str(p.parent) for p in group]))
        relative = image.resolve().relative_to(common).as_posix()
        names.append(relative.replace('/', '_').replace('.', '_') +
                     '_overlay.png')
    seen = {}
    for image, name in zip(images, names):
        if name in seen:
            raise OVSSDataError(
                f'images {seen[name]} and {image} would both be written to '
                f'{name}; rename one of them or run them separately')
        seen[name] = image
    return names


def prepare_out_dir(out_dir: Path, images: Sequence[Path],
                    names: Sequence[str]) -> List[Path]:
    """Create ``out_dir``; the overlay paths, none of them an input."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OVSSDataError(
            f'--out-dir {out_dir} is a file; give a folder (created if '
            'missing)')
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OVSSDataError(
            f'cannot create --out-dir {out_dir} ({err}); give a writable '
            'folder') from err
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OVSSDataError(
            f'--out-dir {out_dir} is not writable; give a writable folder')
    targets = [out_dir / name for name in names]
    inputs = {p.resolve() for p in images}
    for target in targets:
        if target.resolve() in inputs:
            raise OVSSDataError(
                f'the overlay {target} would overwrite an input image; use '
                'another --out-dir')
    return targets


def sample_vocabulary(image: Path):
    table = resolve_data_path(f'{SAMPLES}/vocabularies.json')
    return json.loads(table.read_text()).get(image.name)


def palette(num_classes: int) -> np.ndarray:
    """Distinct BGR colours (golden-angle hues), black-free."""
    return golden_palette(num_classes)


def is_pnp_config(model_cfg) -> bool:
    """A PnP-OVSS model (a BLIP or BridgeTower, no CLIP)."""
    return model_cfg.get('type') == 'PnPOVSS'


def load_config(args):
    from mmseg_ovss.visualization.models import load_config as load
    cfg = load(args.config, args.cfg_options)
    model = cfg.model
    pnp = is_pnp_config(model)
    if not pnp and not model.get('clip'):
        raise OVSSConfigError(
            f'config {args.config} (model type {model.get("type")!r}) has '
            'neither model.clip (the CLIP segmentors) nor a PnP-OVSS model '
            "(type='PnPOVSS'); tools/demo.py runs those two kinds")
    if not pnp and not hasattr(_model_class(model), 'set_vocabulary'):
        raise OVSSConfigError(
            f'config {args.config} builds a {model.get("type")}, whose '
            'vocabulary comes from its dataset (a trained open-vocabulary '
            'model): run tools/test.py on it; tools/demo.py runs the '
            'training-free CLIP segmentors and PnP-OVSS')
    if args.stages and not pnp:
        raise OVSSConfigError(
            f'--stages writes the PnP-OVSS stage maps, but {args.config} is '
            'not a PnP-OVSS config; for FreeCP stages run '
            'tools/freecp_visualize.py CONFIG IMAGE --out-dir DIR')
    if pnp and (args.random_init or args.model_name):
        raise OVSSConfigError(
            f'--random-init / --model-name choose a CLIP, but {args.config} '
            'is a PnP-OVSS config (a BLIP or BridgeTower model): give its '
            'weights as a local folder with --checkpoint (a tiny random one '
            'is made by mmseg_ovss.testing.tiny_blip.make_tiny_blip)')
    return cfg


def _model_class(model_cfg):
    from mmseg.registry import MODELS
    import mmseg_ovss  # noqa: F401 (registers the models)
    kind = model_cfg.get('type')
    found = MODELS.get(kind) if isinstance(kind, str) else kind
    if found is None:
        raise OVSSConfigError(
            f'model type {kind!r} is not registered; check the config name '
            'or its custom_imports')
    return found


def _set_pnp_weights(model_cfg, checkpoint: str) -> None:
    key = 'bridgetower' if model_cfg.get('bridgetower') else 'blip'
    weights = model_cfg.get(key) or {}
    weights['pretrained'] = checkpoint
    model_cfg[key] = weights


def build_model(args, cfg=None):
    from mmseg_ovss.visualization.models import (build_segmentor,
                                                 set_clip_weights)
    cfg = cfg if cfg is not None else load_config(args)
    if is_pnp_config(cfg.model):
        if args.checkpoint:
            _set_pnp_weights(cfg.model, args.checkpoint)
    else:
        set_clip_weights(cfg, args.model_name, args.checkpoint,
                         args.random_init)
    return build_segmentor(cfg, args.device)


def segment(model, image: np.ndarray, short_side: int) -> np.ndarray:
    inputs, sample = model_sample(model, image, short_side)
    with torch.no_grad():
        result = model.predict(inputs, [sample])[0]
    return result.pred_sem_seg.data[0].cpu().numpy()


def set_vocabulary(model, args, classes) -> List[str]:
    """Give the model its vocabulary; the class names (first synonyms)."""
    from mmseg_ovss.blip.vocabulary import read_synonyms
    from mmseg_ovss.clip.vocabulary import find_background_class
    source = args.class_file if args.class_file else classes
    if not hasattr(model, 'cross_attention'):  # the CLIP segmentors
        if args.class_file:
            model.set_vocabulary(class_names_file=args.class_file)
        else:
            model.set_vocabulary(classes)
        return list(model.vocabulary_embeddings().class_names)
    synonyms = read_synonyms(source, model.shared_synonyms)
    model.set_vocabulary(source, find_background_class(synonyms))
    return [names[0] for names in model.vocabulary]


def label_names_and_colours(model, labels: np.ndarray, names: List[str],
                            cfg) -> tuple:
    """Legend names, colours and labels in range: a PnP-OVSS model labels
    "all classes off" pixels ``ignore_index`` when the vocabulary has no
    background class; they get the "(no class)" entry."""
    colours = class_palette(names, cfg)
    ignore = getattr(model, 'ignore_index', None)
    if ignore is not None and ignore >= len(names):
        labels = np.where(labels == ignore, len(names), labels)
        names = names + [NO_CLASS]
        colours = np.concatenate(
            [colours, np.asarray([NO_CLASS_BGR], np.uint8)])
    return labels, names, colours


def write_stages(model, image: np.ndarray, short_side: int, names,
                 cfg, folder: Path, alpha: float) -> dict:
    """PnP-OVSS: the maps of every stage of one image (``--stages``)."""
    from mmseg_ovss.visualization.pnp_stages import write_pnp_stages
    inputs, sample = model_sample(model, image, short_side)
    img_h, img_w = sample.img_shape[:2]
    with torch.no_grad():
        stages = model.segment_stages(inputs[0, :, :img_h, :img_w],
                                      model.captioned_classes(sample),
                                      image.shape[:2])
    labels, label_names, colours = label_names_and_colours(
        model, stages.labels.cpu().numpy(), names, cfg)
    return write_pnp_stages(stages, image, names, folder, colours,
                            label_names, labels, alpha)


def image_vocabularies(args, images: Sequence[Path]) -> list:
    """The class list of each image (None with --class-file): --classes, or
    the samples' table; checked before the model is built."""
    if args.class_file:
        return [None] * len(images)
    vocabularies = [args.classes or sample_vocabulary(path)
                    for path in images]
    missing = [str(p) for p, v in zip(images, vocabularies) if not v]
    if missing:
        raise OVSSConfigError(
            f'no vocabulary for {", ".join(missing[:3])}: pass --classes '
            '(e.g. --classes background cat "dog, puppy") or --class-file')
    return vocabularies


def main(argv=None) -> List[str]:
    """Segment the images; returns the overlay paths written."""
    args = parse_args(argv)
    images = collect_images(args.images)
    targets = prepare_out_dir(Path(args.out_dir), images,
                              output_names(images))
    vocabularies = image_vocabularies(args, images)
    cfg = load_config(args)
    try:
        model = build_model(args, cfg)
    except OVSSWeightsError as err:
        hint = ('--checkpoint /path/to/blip-folder (a local BLIP '
                'checkpoint folder)' if is_pnp_config(cfg.model) else
                '--checkpoint /path/to/ViT-B-16.pt, or --random-init to try '
                'it offline')
        raise SystemExit(f'{err}\nExample: python tools/demo.py {hint}.')
    short_side = args.short_side or DEFAULT_SHORT_SIDE
    written = []
    for path, target, classes in zip(images, targets, vocabularies):
        names = set_vocabulary(model, args, classes)
        image = read_image(path)
        labels = segment(model, image, short_side)
        labels, label_names, colours = label_names_and_colours(
            model, labels, names, cfg)
        overlay = draw_overlay(image, labels, label_names, args.alpha,
                               colours)
        write_image(target, overlay)
        written.append(str(target))
        print(f'{path} -> {target}')
        if args.stages:
            folder = target.with_name(
                target.name[:-len('_overlay.png')] + '_stages')
            facts = write_stages(model, image, short_side, names, cfg,
                                 folder, args.alpha)
            written += [str(folder / name) for name in facts['files']]
            print(f'{path} -> {folder}/ ({len(facts["files"])} stages)')
    return written


if __name__ == '__main__':
    main()
