"""Efficiency table of trainable open-vocabulary segmentors (DCP-CLIP Table II).

    python tools/analysis/efficiency_table.py \\
        configs/dcpclip/vit-l14_coco-stuff171_80k.py \\
        configs/catseg/vit-l14_coco-stuff171_80k.py \\
        --dataset ade150 --images 4 --random-init --also-dataset ade847

For each config: learnable and total parameters (M), inference GFLOPs per
image averaged over the images (with Dynamic Category Selection the number
of classes the head computes changes from image to image), and seconds per
image, on the vocabulary of ``--dataset``. The images are the first
``--images`` of that benchmark's validation split when it is on disk
(``$OVSS_DATA_ROOT``), otherwise generated (smoothed noise); the table says
which. Every image goes through the config's test pipeline geometry (CAT-Seg:
resized to 640 x 640) and the model's test-time inference
(``model.test_cfg``: CAT-Seg's sliding windows), as ``tools/test.py`` runs
it.

Conventions: FLOPs as fvcore counts them (one multiply-add = one FLOP;
``mmseg_ovss.engine.complexity``), of the image path (data preprocessing
excluded); the text embeddings of the vocabulary are computed once per
vocabulary and cached at inference, so they are excluded from FLOPs and
times (a first, untimed image fills the cache). Times are wall-clock of the
whole ``test_step`` (preprocessing, inference, resizing to the original
size, argmax) on ``--device``.

Rows of ViT-L/14 configs are compared with the paper's Table II (DCP-CLIP
80.3 M / 443.6 M, 616.2 GFLOPs, 0.20 s; CAT-Seg 70.3 M / 433.7 M,
2121.1 GFLOPs, 0.54 s, on an RTX 3090); the ratios of the first config to
the others are printed next to the paper's. ``--also-dataset`` times each
config again on a second vocabulary (e.g. ADE-847) and prints the time
ratio to ``--dataset``.

Selected classes. DCP-CLIP's head computes only the K classes Dynamic
Category Selection keeps for each image (each view, under CAT-Seg's window
ensemble), so its FLOPs and time are functions of K, and with random (or
untrained) weights K is arbitrary. Every DCP-CLIP row therefore reports the
measured mean K per view (``K/view``), and ``--num-selected K [K ...]`` pins
the selection to exactly K classes per view (the selection's analysis
option ``fixed_count``: the classes the rule selects first, then the others
by their image-level score), one row per K. With two or more K the tool
fits GFLOPs = a + b K by least squares (the head's convolutions, windows
and projections are linear in K; the class attention of the alignment's SA
branch adds a small K^2 term, so with three or more K the largest relative
residual of the fit is printed too) and prints a, b, the K at which DCP-CLIP's GFLOPs reach 0.35 x CAT-Seg's of the same
run, and for ViT-L/14 the K that the paper's 616.2 GFLOPs imply.
"""
import argparse
import json
import os.path as osp
import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))
from mmseg_ovss.utils.errors import OVSSConfigError  # noqa: E402

REPO_ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))

#: DCP-CLIP Table II (ViT-L/14 towers; A-150; one RTX 3090)
PAPER_TABLE2 = {
    'DCPCLIPHead': dict(method='DCP-CLIP', learnable=80.3, total=443.6,
                        gflops=616.2, seconds=0.20),
    'CATSegHead': dict(method='CAT-Seg', learnable=70.3, total=433.7,
                       gflops=2121.1, seconds=0.54),
}
#: benchmark key -> dataset base config (vocabulary and validation images)
DATASET_BASES = {
    'ade150': 'configs/_base_/datasets/ade150.py',
    'ade847': 'configs/_base_/datasets/ade847.py',
    'pc459': 'configs/_base_/datasets/pc459.py',
    'pc59': 'configs/_base_/datasets/pc59.py',
    'voc20': 'configs/_base_/datasets/voc20.py',
    'coco_stuff171': 'configs/_base_/datasets/coco_stuff171.py',
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='+', metavar='CONFIG')
    parser.add_argument('--dataset', default='ade150',
                        choices=sorted(DATASET_BASES),
                        help='vocabulary and images (default ade150)')
    parser.add_argument('--also-dataset', default=None,
                        choices=sorted(DATASET_BASES),
                        help='time every config on this vocabulary too and '
                        'report the time ratio to --dataset')
    parser.add_argument('--images', type=int, default=4,
                        help='measured images per config (after one '
                        'untimed warm-up image)')
    parser.add_argument('--size', type=int, nargs=2, default=None,
                        metavar=('H', 'W'), help='size of generated images '
                        '(default: the test pipeline\'s Resize scale)')
    parser.add_argument('--generated', action='store_true',
                        help='use generated images even when the dataset '
                        'is on disk')
    parser.add_argument('--random-init', action='store_true',
                        help='random CLIP weights (no download; parameter '
                        'counts and FLOPs need no weights)')
    parser.add_argument('--device', default='cuda' if
                        torch.cuda.is_available() else 'cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-flops', action='store_true',
                        help='skip the FLOP count (times and parameters '
                        'only)')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        metavar='KEY=VALUE',
                        help='overrides applied to every config')
    parser.add_argument('--num-selected', type=int, nargs='+', default=None,
                        metavar='K', help='DCP-CLIP rows: pin the selection '
                        'to exactly K classes per view (one row per K; an '
                        'analysis option, see the module doc)')
    parser.add_argument('--out', help='write the rows as JSON to this file')
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f'--images {args.images}: give at least 1')
    if args.num_selected and min(args.num_selected) < 1:
        parser.error(f'--num-selected {args.num_selected}: K must be >= 1')
    return args


# ------------------------------------------------------------------ model
def load_config(path: str, args):
    from mmengine.config import Config, DictAction
    cfg = Config.fromfile(path)
    if args.cfg_options:
        parser = argparse.ArgumentParser()
        parser.add_argument('--o', nargs='+', action=DictAction)
        cfg.merge_from_dict(parser.parse_args(
            ['--o', *args.cfg_options]).o)
    if 'clip' not in cfg.model:
        raise OVSSConfigError(
            f'{path}: model has no "clip" entry; this tool measures '
            'OpenVocabEncoderDecoder configs (CAT-Seg, DCP-CLIP, ZegCLIP, '
            'CLIP-RC)')
    if args.random_init:
        cfg.model.clip.random_init = True
        cfg.model.clip.pretrained = None
        cfg.model.clip.checkpoint = None
        cfg.model.clip.seed = args.seed
    return cfg


def build_model(cfg, device: str):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    import mmseg_ovss  # noqa: F401
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = MODELS.build(cfg.model)
    return model.to(device).eval()


def count_parameters(model: nn.Module) -> Tuple[float, float]:
    """(learnable, total) parameters in millions."""
    try:
        from mmseg_ovss.engine.parameters import count_parameters as count
        counts = count(model)
        return counts['learnable'] / 1e6, counts['total'] / 1e6
    except ImportError:
        learnable = sum(p.numel() for p in model.parameters()
                        if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        return learnable / 1e6, total / 1e6


class TestTimeInference(nn.Module):
    """The segmentor's test-time inference on preprocessed inputs as one
    module (what the FLOP counter traces): ``model.inference`` (whole or
    sliding windows as ``model.test_cfg`` says, scores resized to the
    original size)."""

    def __init__(self, model: nn.Module, batch_img_metas: List[dict]):
        super().__init__()
        self.model = model
        self.batch_img_metas = batch_img_metas

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.inference(inputs, self.batch_img_metas)

    def _forward(self, inputs: torch.Tensor, data_samples=None):
        return self.forward(inputs)


def inference_flops(model: nn.Module, inputs: torch.Tensor,
                    metas: List[dict]) -> float:
    """FLOPs (fvcore convention) of one test-time inference."""
    from mmseg_ovss.engine.complexity import model_complexity
    wrapper = TestTimeInference(model, metas)
    # model_complexity restores the wrapper's mode on the model afterwards:
    # the model's own (eval), not a fresh module's (train)
    wrapper.train(model.training)
    with torch.no_grad():
        # the vocabulary's embeddings are computed once, outside the count
        text = model.text_inputs()
        model.text_inputs = lambda: text
        try:
            result = model_complexity(wrapper, inputs)
        finally:
            del model.text_inputs
    return float(result['flops'])


# ----------------------------------------------------------------- images
def dataset_vocabulary(dataset: str) -> List[str]:
    from mmengine.config import Config
    from mmseg.registry import DATASETS
    import mmseg_ovss  # noqa: F401
    base = Config.fromfile(osp.join(REPO_ROOT, DATASET_BASES[dataset]))
    cls = DATASETS.get(base.test_dataloader.dataset.type)
    return list(cls.METAINFO['classes'])


def resize_scale(cfg) -> Optional[Tuple[int, int]]:
    """(H, W) of the config's test-pipeline Resize without keep_ratio."""
    pipeline = cfg.get('test_pipeline') or []
    for step in pipeline:
        if step.get('type') == 'Resize' and not step.get('keep_ratio', True):
            width, height = step['scale']
            return int(height), int(width)
    return None


def dataset_images(dataset: str, count: int, pipeline: list):
    """Up to ``count`` packed samples of the benchmark's validation split
    through ``pipeline``, or None when the dataset is not on disk."""
    from mmengine.config import Config
    from mmseg.registry import DATASETS
    base = Config.fromfile(osp.join(REPO_ROOT, DATASET_BASES[dataset]))
    dataset_cfg = base.test_dataloader.dataset
    dataset_cfg.pipeline = pipeline
    try:
        data = DATASETS.build(dataset_cfg)
    except (FileNotFoundError, OSError, ValueError, AssertionError):
        return None
    if len(data) == 0:
        return None
    return [data[i] for i in range(min(count, len(data)))]


def generated_images(count: int, height: int, width: int, seed: int):
    """Packed samples of smoothed-noise BGR images (C, H, W uint8)."""
    import cv2
    from mmseg.structures import SegDataSample
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        noise = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3),
                             dtype=np.uint8)
        image = cv2.resize(noise, (width, height),
                           interpolation=cv2.INTER_CUBIC)
        sample = SegDataSample(metainfo=dict(
            img_shape=(height, width), ori_shape=(height, width),
            pad_shape=(height, width), scale_factor=(1.0, 1.0),
            flip=False, img_path=None))
        samples.append(dict(inputs=torch.from_numpy(
            image.transpose(2, 0, 1).copy()), data_samples=sample))
    return samples


def eval_images(cfg, args, dataset: str, count: int):
    """(samples, description) for ``dataset``."""
    scale = resize_scale(cfg) or (640, 640)
    if args.size:
        scale = tuple(args.size)
    if not args.generated:
        pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(scale[1], scale[0]),
                 keep_ratio=False),
            dict(type='PackSegInputs'),
        ]
        samples = dataset_images(dataset, count, pipeline)
        if samples is not None:
            return samples, (f'{dataset} validation images (first '
                             f'{len(samples) - 1} after a warm-up), '
                             f'resized to {scale[0]}x{scale[1]}')
    return (generated_images(count, *scale, seed=args.seed),
            f'generated smoothed-noise images {scale[0]}x{scale[1]} '
            f'({dataset} not on disk or --generated)')


def collate(sample: dict) -> dict:
    return dict(inputs=[sample['inputs']],
                data_samples=[sample['data_samples']])


def synchronize(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


# ---------------------------------------------------------------- measure
class SelectionCounter:
    """Counts the classes Dynamic Category Selection keeps per view (a
    forward hook on the head's ``category_selection``; nothing when the
    head has none)."""

    def __init__(self, model: nn.Module):
        self.counts: List[int] = []
        self.enabled = True
        module = getattr(model.decode_head, 'category_selection', None)
        self.handle = None if module is None else \
            module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.enabled:
            self.counts.extend(output.num_selected.tolist())

    def close(self):
        if self.handle is not None:
            self.handle.remove()


def measure(model, cfg, args, dataset: str, with_flops: bool) -> dict:
    """Mean seconds and GFLOPs per image on ``dataset``'s vocabulary, and
    the mean number of classes selected per view (DCP-CLIP)."""
    model.set_dataset_classes(dataset_vocabulary(dataset))
    samples, source = eval_images(cfg, args, dataset, args.images + 1)
    seconds, flops = [], []
    counter = SelectionCounter(model)
    with torch.no_grad():
        for index, sample in enumerate(samples):
            synchronize(args.device)
            counter.enabled = index > 0
            start = time.perf_counter()
            model.test_step(collate(sample))
            synchronize(args.device)
            counter.enabled = False
            if index == 0:
                continue  # warm-up: caches the vocabulary's text embeddings
            seconds.append(time.perf_counter() - start)
            if with_flops:
                data = model.data_preprocessor(collate(sample), False)
                metas = [s.metainfo for s in data['data_samples']]
                flops.append(inference_flops(model, data['inputs'], metas))
    counter.close()
    selected = float(np.mean(counter.counts)) if counter.counts else None
    return dict(dataset=dataset, images=len(seconds), source=source,
                selected_per_view=selected,
                seconds=float(np.mean(seconds)),
                gflops=float(np.mean(flops)) / 1e9 if flops else None,
                gflops_per_image=[f / 1e9 for f in flops])


def paper_row(cfg) -> Optional[dict]:
    """The Table II row of a ViT-L/14 CAT-Seg / DCP-CLIP config."""
    head = cfg.model.decode_head.get('type')
    name = str(cfg.model.clip.get('model_name', ''))
    if head in PAPER_TABLE2 and name.startswith('ViT-L-14'):
        return PAPER_TABLE2[head]
    return None


def has_selection(cfg) -> bool:
    """Whether the config's head runs Dynamic Category Selection."""
    return bool(cfg.model.decode_head.get('category_selection'))


def measure_config(path: str, args, num_selected: Optional[int] = None
                   ) -> dict:
    cfg = load_config(path, args)
    if num_selected is not None:
        cfg.model.decode_head.category_selection.fixed_count = num_selected
    torch.manual_seed(args.seed)
    model = build_model(cfg, args.device)
    learnable, total = count_parameters(model)
    row = dict(config=path, learnable_m=learnable, total_m=total,
               device=args.device, paper=paper_row(cfg),
               num_selected=num_selected, dcs=has_selection(cfg))
    row['main'] = measure(model, cfg, args, args.dataset,
                          with_flops=not args.no_flops)
    if args.also_dataset:
        row['also'] = measure(model, cfg, args, args.also_dataset,
                              with_flops=False)
        row['time_ratio_also'] = row['also']['seconds'] / \
            row['main']['seconds']
    del model
    return row


def measure_all(args) -> List[dict]:
    """One row per config, and for DCP-CLIP one more per
    ``--num-selected`` K."""
    rows = []
    for path in args.configs:
        pins = [None]  # the selection rule itself (K measured)
        if args.num_selected and has_selection(load_config(path, args)):
            pins += list(args.num_selected)
        rows += [measure_config(path, args, k) for k in pins]
    return rows


def fit_flops(rows: List[dict]) -> Optional[dict]:
    """Least-squares GFLOPs = a + b K over the pinned DCP-CLIP rows (two K
    or more); with a CAT-Seg row of the same run, the K at which DCP-CLIP
    reaches 0.35 x its GFLOPs; for ViT-L/14, the K of the paper's 616.2."""
    pinned = [r for r in rows if r['num_selected'] is not None and
              r['main']['gflops'] is not None]
    if len({r['num_selected'] for r in pinned}) < 2:
        return None
    k = np.array([r['num_selected'] for r in pinned], dtype=float)
    g = np.array([r['main']['gflops'] for r in pinned])
    slope, base = np.polyfit(k, g, 1)
    residual = np.abs(base + slope * k - g) / g
    out = dict(base_gflops=float(base), gflops_per_class=float(slope),
               max_relative_residual=float(residual.max()))
    catseg = [r for r in rows if not r['dcs'] and r['main']['gflops']]
    if catseg and slope > 0:
        goal = 0.35 * catseg[0]['main']['gflops']
        out['catseg_gflops'] = catseg[0]['main']['gflops']
        out['k_at_goal'] = float((goal - base) / slope)
    paper = pinned[0]['paper']
    if paper and slope > 0:
        out['k_paper'] = float((paper['gflops'] - base) / slope)
    return out


# ------------------------------------------------------------------ print
def _fmt(value, spec='.1f') -> str:
    if value is None:
        return '-'
    if spec == '.1f' and 0 < abs(value) < 1:
        spec = '.3g'  # tiny models
    return format(value, spec)


def _deviation(ours, paper) -> str:
    if ours is None or paper is None:
        return ''
    return f' ({100 * (ours - paper) / paper:+.1f} %)'


def render(rows: List[dict], args) -> str:
    head = ('| config | learnable (M) | total (M) | K/view | '
            'GFLOPs / image | s / image |')
    if args.also_dataset:
        head += f' s / image {args.also_dataset} | ratio |'
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for row in rows:
        main, paper = row['main'], row['paper']
        label = osp.basename(row['config'])
        if row.get('num_selected') is not None:
            label += f' (K pinned to {row["num_selected"]})'
        cells = [
            label,
            _fmt(row['learnable_m']) + _deviation(
                row['learnable_m'], paper and paper['learnable']),
            _fmt(row['total_m']) + _deviation(
                row['total_m'], paper and paper['total']),
            _fmt(main.get('selected_per_view')),
            _fmt(main['gflops']), _fmt(main['seconds'], '.3f')]
        if args.also_dataset:
            cells += [_fmt(row['also']['seconds'], '.3f'),
                      _fmt(row['time_ratio_also'], '.2f')]
        lines.append('| ' + ' | '.join(cells) + ' |')
        if paper:
            cells = [f'paper: {paper["method"]} ViT-L/14 (Table II)',
                     _fmt(paper['learnable']), _fmt(paper['total']), '',
                     _fmt(paper['gflops']), _fmt(paper['seconds'], '.2f')]
            if args.also_dataset:
                cells += ['', '']
            lines.append('| ' + ' | '.join(cells) + ' |')
    if len(rows) > 1:
        first = rows[0]
        lines.append('')
        lines.append(f'Ratios of {osp.basename(first["config"])} to:')
        for row in rows[1:]:
            gf = None
            if first['main']['gflops'] and row['main']['gflops']:
                gf = first['main']['gflops'] / row['main']['gflops']
            sec = first['main']['seconds'] / row['main']['seconds']
            text = (f'- {osp.basename(row["config"])}: GFLOPs x'
                    f'{_fmt(gf, ".3f")}, time x{sec:.3f}')
            if first['paper'] and row['paper']:
                text += (f' (paper: GFLOPs x'
                         f'{first["paper"]["gflops"] / row["paper"]["gflops"]:.3f}'
                         f', time x'
                         f'{first["paper"]["seconds"] / row["paper"]["seconds"]:.3f})')
            lines.append(text)
    fit = fit_flops(rows)
    if fit:
        lines.append('')
        text = (f'DCP-CLIP GFLOPs = {fit["base_gflops"]:.2f} + '
                f'{fit["gflops_per_class"]:.3f} x K (K: classes per view; '
                f'largest residual {100 * fit["max_relative_residual"]:.2f}'
                ' %)')
        if 'k_at_goal' in fit:
            text += (f'; 0.35 x CAT-Seg ({fit["catseg_gflops"]:.1f}) is '
                     f'reached at K = {fit["k_at_goal"]:.1f}')
        if 'k_paper' in fit:
            text += (f'; the paper\'s 616.2 GFLOPs imply K = '
                     f'{fit["k_paper"]:.1f}')
        lines.append(text)
    lines.append('')
    lines.append('K/view: mean classes the head computed per view (Dynamic '
                 'Category Selection; random weights select arbitrarily)')
    lines.append(f'images: {rows[0]["main"]["source"]}; device '
                 f'{rows[0]["device"]}; weights: '
                 f'{"random" if args.random_init else "from the configs"}')
    return '\n'.join(lines)


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    rows = measure_all(args)
    print(render(rows, args))
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as handle:
            json.dump(dict(rows=rows, flops_fit=fit_flops(rows)), handle,
                      indent=1)
    return rows


if __name__ == '__main__':
    main()
