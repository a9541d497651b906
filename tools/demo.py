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
"""
import argparse
import json
import os.path as osp
import sys
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
                        help='resize the short side (default: 336)')
    parser.add_argument('--out-dir', default='work_dirs/demo')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--alpha', type=float, default=0.5)
    return parser.parse_args(argv)


def collect_images(paths: Sequence[str]) -> List[Path]:
    if not paths:
        paths = [str(resolve_data_path(SAMPLES))]
    images = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            images += sorted(p for p in path.iterdir()
                             if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            images.append(path)
        else:
            raise OVSSDataError(f'image {item!r} does not exist')
    if not images:
        raise OVSSDataError(f'no images found in {list(paths)}')
    return images


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
    strategy = cfg.model.get('strategy', {})
    if args.random_init and strategy.get('type') == 'ProxyCLIP':
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


def main(argv=None) -> List[str]:
    import mmcv
    args = parse_args(argv)
    images = collect_images(args.images)
    try:
        model = build_model(args)
    except OVSSWeightsError as err:
        raise SystemExit(
            f'{err}\nExample: python tools/demo.py --checkpoint '
            '/path/to/ViT-B-16.pt, or --random-init to try it offline.')
    short_side = args.short_side or 336
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        if args.class_file:
            model.set_vocabulary(class_names_file=args.class_file)
        else:
            classes = args.classes or sample_vocabulary(path)
            if not classes:
                raise OVSSConfigError(
                    f'no vocabulary for {path.name}: pass --classes (e.g. '
                    '--classes background cat "dog, puppy") or --class-file')
            model.set_vocabulary(classes)
        image = mmcv.imread(str(path), flag='color')  # gray/RGBA -> BGR
        if image is None:
            raise OVSSDataError(f'cannot read image {path}')
        labels = segment(model, image, short_side)
        names = model.vocabulary_embeddings().class_names
        overlay = draw_overlay(image, labels, names, args.alpha)
        target = out_dir / f'{path.stem}_overlay.png'
        cv2.imwrite(str(target), overlay)
        written.append(str(target))
        print(f'{path} -> {target}')
    return written


if __name__ == '__main__':
    main()
