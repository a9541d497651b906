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

import cv2
import numpy as np
import torch

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))
from mmseg_ovss.utils.errors import (OVSSConfigError,  # noqa: E402
                                     OVSSDataError, OVSSWeightsError)
from mmseg_ovss.utils.paths import resolve_data_path  # noqa: E402

DEFAULT_CONFIG = 'configs/_base_/models/clip_sclip.py'
SAMPLES = 'data/samples'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff',
                    '.webp')
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
    parser.add_argument('--checkpoint', help='local CLIP weights file')
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
    hues = (np.arange(num_classes) * 137.508) % 180
    hsv = np.stack([hues, np.full(num_classes, 200),
                    np.full(num_classes, 230)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0]


def draw_overlay(image: np.ndarray, labels: np.ndarray,
                 class_names: Sequence[str], alpha: float) -> np.ndarray:
    """Blend the label colours over a BGR image and add a legend panel."""
    colours = palette(len(class_names))
    blended = cv2.addWeighted(image, 1 - alpha, colours[labels], alpha, 0)
    present = [int(c) for c in np.unique(labels)]
    row = 22
    panel = np.full((max(image.shape[0], row * (len(present) + 1)), 220, 3),
                    255, np.uint8)
    for i, cls in enumerate(present):
        y = row * i + 6
        cv2.rectangle(panel, (8, y), (26, y + 16),
                      tuple(int(v) for v in colours[cls]), -1)
        share = 100.0 * float((labels == cls).mean())
        cv2.putText(panel, f'{class_names[cls][:18]} {share:.0f}%',
                    (34, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0),
                    1, cv2.LINE_AA)
    canvas = np.full((panel.shape[0], image.shape[1] + panel.shape[1], 3),
                     255, np.uint8)
    canvas[:image.shape[0], :image.shape[1]] = blended
    canvas[:, image.shape[1]:] = panel
    return canvas


def build_model(args):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    import mmseg_ovss  # noqa: F401 (registers the models)
    cfg = Config.fromfile(str(resolve_data_path(args.config)))
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    clip = cfg.model.clip
    if args.model_name:
        clip.model_name = args.model_name
    if args.checkpoint:
        clip.checkpoint = args.checkpoint
    if args.random_init:
        clip.random_init = True
    if args.random_init:  # ProxyCLIP's vision foundation model too
        backbone = cfg.model.get('backbone') or {}
        for strategy in (backbone.get('dense_strategy'),
                         cfg.model.get('strategy')):  # (the old key)
            if isinstance(strategy, dict) and \
                    strategy.get('type') == 'ProxyCLIP':
                strategy.random_init = True
    model = MODELS.build(cfg.model)
    return model.to(args.device).eval()


def preprocess(model, image: np.ndarray, short_side: int):
    """Resize the short side (keep ratio) and normalise like the configs."""
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    resized = cv2.resize(image, (max(1, round(w * scale)),
                                 max(1, round(h * scale))),
                         interpolation=cv2.INTER_LINEAR)
    tensor = torch.from_numpy(resized).permute(2, 0, 1).contiguous()
    data = model.data_preprocessor(dict(inputs=[tensor]), False)
    return data['inputs'], resized.shape[:2]


def segment(model, image: np.ndarray, short_side: int) -> np.ndarray:
    from mmseg.structures import SegDataSample
    inputs, img_shape = preprocess(model, image, short_side)
    sample = SegDataSample(metainfo=dict(
        ori_shape=image.shape[:2], img_shape=img_shape,
        pad_shape=tuple(inputs.shape[-2:]), padding_size=[0, 0, 0, 0]))
    with torch.no_grad():
        result = model.predict(inputs, [sample])[0]
    return result.pred_sem_seg.data[0].cpu().numpy()


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


def read_image(path: Path) -> np.ndarray:
    """A BGR uint8 image (grey and RGBA converted), or an error naming it."""
    import mmcv
    try:
        image = mmcv.imread(str(path), flag='color')
    except (cv2.error, OSError, ValueError):
        image = None
    if image is None or image.size == 0:
        raise OVSSDataError(
            f'cannot read image {path}: it is empty, corrupt or not an image '
            f'({", ".join(IMAGE_EXTENSIONS)})')
    return image


def write_image(target: Path, image: np.ndarray) -> None:
    """``cv2.imwrite`` that raises, naming the file, if nothing is written."""
    try:
        written = cv2.imwrite(str(target), image)
    except cv2.error:
        written = False
    if not written:
        raise OVSSDataError(
            f'cannot write {target}; check that its folder exists, is '
            'writable and has free space')


def main(argv=None) -> List[str]:
    """Segment the images; returns the overlay paths written."""
    args = parse_args(argv)
    images = collect_images(args.images)
    targets = prepare_out_dir(Path(args.out_dir), images,
                              output_names(images))
    vocabularies = image_vocabularies(args, images)
    try:
        model = build_model(args)
    except OVSSWeightsError as err:
        raise SystemExit(
            f'{err}\nExample: python tools/demo.py --checkpoint '
            '/path/to/ViT-B-16.pt, or --random-init to try it offline.')
    short_side = args.short_side or DEFAULT_SHORT_SIDE
    written = []
    for path, target, classes in zip(images, targets, vocabularies):
        if args.class_file:
            model.set_vocabulary(class_names_file=args.class_file)
        else:
            model.set_vocabulary(classes)
        image = read_image(path)
        labels = segment(model, image, short_side)
        names = model.vocabulary_embeddings().class_names
        overlay = draw_overlay(image, labels, names, args.alpha)
        write_image(target, overlay)
        written.append(str(target))
        print(f'{path} -> {target}')
    return written


if __name__ == '__main__':
    main()
