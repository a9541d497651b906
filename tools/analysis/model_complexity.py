"""FLOPs and parameters (learnable, total) of any config's model.

    python tools/analysis/model_complexity.py configs/cliprc/<cfg>.py \
        --shape 512 512 --num-classes 20 --random-init
    python tools/analysis/model_complexity.py CONFIG --classes-from-dataset \
        --out complexity.json

FLOPs follow fvcore's convention (one multiply-add = one FLOP) on the
model's test-time tensor forward (backbone + decode head, ``mode='tensor'``)
of one random image of ``--shape H W`` (``mmseg_ovss/engine/complexity.py``
lists what is counted). For an open-vocabulary segmentor the vocabulary is
``--num-classes`` placeholder names or, with ``--classes-from-dataset``,
the classes of the config's test dataset; its class embeddings are
computed before the count unless ``--count-text``. ``--random-init`` builds
the CLIP towers without weights (no download): ``model.clip.random_init``.
"""
import argparse
import json
import os.path as osp
import sys
from typing import List

import torch
from mmengine.config import DictAction

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))
from mmseg_ovss.engine.complexity import (  # noqa: E402
    format_complexity, model_complexity)
from mmseg_ovss.engine.launch import (  # noqa: E402
    check_config_keys, merge_cfg_options)
from mmseg_ovss.utils.errors import OVSSConfigError  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--shape', type=int, nargs=2, default=None,
                        metavar=('H', 'W'),
                        help='input size (default: the config\'s crop size '
                        'of slide inference, else 512 512)')
    parser.add_argument('--batch-size', type=int, default=1)
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument('--num-classes', type=int, default=None,
                       help='vocabulary of C placeholder class names '
                       '(open-vocabulary segmentors)')
    vocab.add_argument('--classes-from-dataset', action='store_true',
                       help="the config's test dataset classes")
    parser.add_argument('--count-text', action='store_true',
                        help='count the text tower in the forward (default: '
                        'class embeddings computed before the count)')
    parser.add_argument('--random-init', action='store_true',
                        help='CLIP towers without weights (no download)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings (keys must exist; prefix '
                        '"+" to add one)')
    parser.add_argument('--out', help='write the result as JSON')
    parser.add_argument('--quiet', action='store_true',
                        help='do not print the table')
    return parser.parse_args(argv)


def set_random_init(model_cfg, seed: int) -> None:
    """CLIP towers without weights: ``model.clip`` (both towers) and any
    tower config that names its own weights."""
    towers = [model_cfg.get('clip')] + [
        model_cfg.get(key) for key in ('backbone', 'text_encoder')]
    for index, tower in enumerate(towers):
        if not isinstance(tower, dict):
            continue
        if index == 0 or 'pretrained' in tower or 'model_name' in tower:
            tower['random_init'] = True
            tower['pretrained'] = None
            tower['seed'] = seed


def dataset_classes(cfg) -> List[str]:
    """Class names of the config's test (else val) dataset, from its
    metainfo (no data is read)."""
    from mmseg.registry import DATASETS
    for key in ('test_dataloader', 'val_dataloader'):
        loader = cfg.get(key)
        if not loader:
            continue
        dataset = loader.get('dataset', {})
        classes = (dataset.get('metainfo') or {}).get('classes')
        if classes is None and isinstance(dataset.get('type'), str):
            cls = DATASETS.get(dataset['type'])
            classes = (getattr(cls, 'METAINFO', None) or {}).get('classes')
        if classes:
            return list(classes)
    raise OVSSConfigError(
        f'--classes-from-dataset: the config has no test or val dataset '
        'with class names in its metainfo; give --num-classes C')


def default_shape(cfg) -> List[int]:
    test_cfg = cfg.model.get('test_cfg') or {}
    if test_cfg.get('mode') == 'slide' and test_cfg.get('crop_size'):
        return list(test_cfg['crop_size'])
    return [512, 512]


def build(args):
    """The config and its model (vocabulary set), in eval mode."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    import mmseg_ovss  # noqa: F401
    cfg = Config.fromfile(args.config)
    check_config_keys(cfg, args.config)
    merge_cfg_options(cfg, args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    if args.random_init:
        set_random_init(cfg.model, args.seed)
    torch.manual_seed(args.seed)
    model = MODELS.build(cfg.model).to(args.device)
    if hasattr(model, 'set_dataset_classes'):
        if args.classes_from_dataset:
            names = dataset_classes(cfg)
        elif args.num_classes:
            names = [f'class {i}' for i in range(args.num_classes)]
        elif getattr(model, 'dataset_classes', None):
            names = None  # the config's class_names
        else:
            raise OVSSConfigError(
                f'{type(model).__name__} takes its vocabulary at run time: '
                'give --num-classes C or --classes-from-dataset')
        if names is not None:
            model.set_dataset_classes(names)
    elif args.num_classes or args.classes_from_dataset:
        raise OVSSConfigError(
            f'{type(model).__name__} has a fixed set of classes; '
            '--num-classes / --classes-from-dataset apply to '
            'open-vocabulary segmentors only')
    return cfg, model.eval()


def main(argv=None):
    args = parse_args(argv)
    if args.batch_size < 1:
        raise OVSSConfigError('--batch-size must be at least 1')
    cfg, model = build(args)
    height, width = args.shape or default_shape(cfg)
    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn(args.batch_size, 3, height, width,
                         generator=generator).to(args.device)
    result = model_complexity(model, inputs, count_text=args.count_text)
    result.update(config=args.config, model=type(model).__name__,
                  num_classes=getattr(model, 'num_classes', None)
                  if hasattr(model, 'set_dataset_classes') else
                  getattr(getattr(model, 'decode_head', None),
                          'num_classes', None))
    if not args.quiet:
        print(format_complexity(result, title=(
            f'{args.config}: input {args.batch_size}x3x{height}x{width}, '
            f'{result["num_classes"]} classes; FLOPs = multiply-adds '
            '(fvcore convention)')))
        if result['skipped_ops']:
            print('not counted (element-wise): ' + ', '.join(
                f'{op} x{n}' for op, n in sorted(
                    result['skipped_ops'].items())))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()

