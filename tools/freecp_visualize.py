"""Write FreeCP's intermediate maps of one image as PNG images.

    python tools/freecp_visualize.py configs/freecp/sclip_voc21.py \\
        photo.jpg --out-dir work_dirs/freecp_vis
    python tools/freecp_visualize.py configs/freecp/sclip_voc21.py \\
        photo.jpg --out-dir D --classes background cat dog --window 0 2 \\
        --random-init --model-name ovss-tiny-ViT-16   # offline smoke run

For each drawn sliding window: the initial CAMs, the refined maps, the
classes kept or dropped by redundancy purification (with their SC score),
each ambiguity group with its crops (winner marked) and the purified maps;
for the image: the final label map. ``summary.json`` holds the same facts
(docs/visualization.md). The maps are recorded from the segmentor's own
``predict`` (``mmseg_ovss.visualization.freecp_stages``), so the final map
is the model's prediction.

The input image is never overwritten, and a folder holding an earlier
run's files is refused unless ``--overwrite`` (which removes the files
that run's ``summary.json`` lists, and no others), so the folder never
mixes two runs.
"""
import argparse
import os.path as osp
import sys
from pathlib import Path
from typing import List, Optional

from mmengine.config import DictAction

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))
from mmseg_ovss.utils.errors import (OVSSConfigError,  # noqa: E402
                                     OVSSWeightsError)
from mmseg_ovss.visualization.models import (  # noqa: E402
    build_segmentor, load_config, model_sample, set_clip_weights, to_bgr)
from mmseg_ovss.visualization.render import (  # noqa: E402
    class_palette, read_image)

#: the short side when the config's test pipeline has no Resize
DEFAULT_SHORT_SIDE = 448
SHORT_SIDE_RANGE = (16, 4096)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='a FreeCP config (configs/freecp/)')
    parser.add_argument('image', help='the image file')
    parser.add_argument('--out-dir', required=True,
                        help='folder of the PNG files and summary.json')
    parser.add_argument('--overwrite', action='store_true',
                        help="remove the files of an earlier run in "
                        "--out-dir first (those its summary.json lists); "
                        'default: such a folder is refused')
    parser.add_argument('--classes', nargs='+',
                        help='vocabulary, one class per argument ("a, b" '
                        "for synonyms); default: the config's")
    parser.add_argument('--class-file', help='class-name file instead')
    parser.add_argument('--window', nargs='+', default=['all'],
                        help='indices of the sliding windows to draw '
                        '(0-based, in mmseg slide order), or "all" '
                        '(default)')
    parser.add_argument('--checkpoint', help='local CLIP weights file')
    parser.add_argument('--model-name', help='open_clip architecture')
    parser.add_argument('--random-init', action='store_true',
                        help='random CLIP weights (offline smoke run)')
    parser.add_argument('--short-side', type=int, default=None,
                        help="resize the short side (default: the config's "
                        f'test Resize, else {DEFAULT_SHORT_SIDE})')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--alpha', type=float, default=0.5,
                        help='opacity of the label colours, 0..1')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        default={}, help='override config keys')
    args = parser.parse_args(argv)
    check_arguments(args)
    return args


def check_arguments(args) -> None:
    from mmseg_ovss.clip.vocabulary import Vocabulary
    if args.classes is not None and args.class_file:
        raise OVSSConfigError(
            'give either --classes or --class-file, not both')
    if args.classes is not None:
        Vocabulary.from_names(args.classes)
    if args.class_file:
        Vocabulary.from_file(args.class_file)
    low, high = SHORT_SIDE_RANGE
    if args.short_side is not None and not low <= args.short_side <= high:
        raise OVSSConfigError(
            f'--short-side {args.short_side} is out of range: give {low}..'
            f'{high} pixels')
    if not 0.0 <= args.alpha <= 1.0:
        raise OVSSConfigError(
            f'--alpha {args.alpha} is out of range: give 0 .. 1')
    if args.window != ['all'] and not all(w.isdigit() for w in args.window):
        raise OVSSConfigError(
            f'--window {" ".join(args.window)}: give window indices '
            '(0, 1, ...) or "all"')


def config_short_side(cfg) -> int:
    """The short side of the config's test ``Resize`` (keep_ratio)."""
    loader = cfg.get('test_dataloader') or {}
    dataset = loader.get('dataset') or {}
    for step in dataset.get('pipeline') or []:
        if step.get('type') == 'Resize' and step.get('keep_ratio'):
            scale = step.get('scale')
            if isinstance(scale, (list, tuple)) and len(scale) == 2:
                return int(min(scale))
    return DEFAULT_SHORT_SIDE


def check_freecp_config(cfg, path: str) -> None:
    model = cfg.model
    head = model.get('decode_head') or {}
    if not model.get('clip') or head.get('type') != 'FreeCPHead':
        raise OVSSConfigError(
            f'config {path} is not a FreeCP config: its model needs '
            "model.clip and decode_head=dict(type='FreeCPHead') (it has "
            f'decode_head type {head.get("type")!r}); use one of '
            'configs/freecp/*.py, e.g. configs/freecp/sclip_voc21.py')


def drawn_windows(choice: List[str], count: int, path: str) -> List[int]:
    if choice == ['all']:
        return list(range(count))
    picked = sorted({int(w) for w in choice})
    bad = [w for w in picked if w >= count]
    if bad:
        raise OVSSConfigError(
            f'--window {bad[0]} does not exist: {path} at this image size '
            f'has {count} window(s), indices 0..{count - 1}')
    return picked


def main(argv=None) -> Optional[dict]:
    """Write the stage images; returns the summary."""
    from mmseg_ovss.visualization.freecp_render import (earlier_run_files,
                                                        write_freecp_stages)
    from mmseg_ovss.visualization.freecp_stages import (freecp_stages,
                                                        window_boxes)
    args = parse_args(argv)
    image = read_image(args.image)
    out = Path(args.out_dir)
    cfg = load_config(args.config, args.cfg_options)
    check_freecp_config(cfg, args.config)
    earlier_run_files(out, args.image, args.overwrite)  # before the model
    set_clip_weights(cfg, args.model_name, args.checkpoint, args.random_init)
    try:
        model = build_segmentor(cfg, args.device)
    except OVSSWeightsError as err:
        raise SystemExit(
            f'{err}\nExample: python tools/freecp_visualize.py CONFIG IMAGE '
            '--out-dir D --checkpoint /path/to/ViT-B-16.pt, or '
            '--random-init to try it offline.')
    if args.class_file:
        model.set_vocabulary(class_names_file=args.class_file)
    elif args.classes:
        model.set_vocabulary(args.classes)
    short_side = args.short_side or config_short_side(cfg)
    inputs, sample = model_sample(model, image, short_side)
    inputs = inputs.to(args.device)
    count = len(window_boxes(model, *inputs.shape[-2:])) \
        if model.decode_head.purification_scope == 'window' else 1
    draw = drawn_windows(args.window, count, args.config)
    stages = freecp_stages(model, inputs, sample)
    colours = class_palette(stages.class_names, cfg)
    summary = write_freecp_stages(
        stages, out, lambda pixels: to_bgr(model, pixels), image, colours,
        draw, args.alpha,
        extra=dict(config=args.config, image=str(args.image),
                   input_shape=list(inputs.shape[-2:])),
        overwrite=args.overwrite, image_path=args.image)
    print(f'{args.image} -> {out}/ ({len(summary["files"])} images, '
          'summary.json)')
    return summary


if __name__ == '__main__':
    main()
