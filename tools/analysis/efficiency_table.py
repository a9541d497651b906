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
run, and for ViT-L/14 the K that the paper's 616.2 GFLOPs imply. A config
is built once; its rows differ only in the selection's ``fixed_count``.

Vocabularies. ``--also-dataset`` interleaves the two vocabularies image by
image (the same images; one untimed warm-up image on each first), so that
the time ratio is taken under the same machine load. The class embeddings
of a vocabulary go through the text tower once: the text encoder's
embedding bank on disk (``mmseg_ovss.clip.text_bank``; ``--text-bank DIR``
or ``$OVSS_TEXT_BANK``) keeps every prompt, so a second run reads them back;
the tool prints how many of the vocabulary's prompts the bank already
holds. With ``--random-init`` the embeddings of a random text tower carry
no meaning and take long on a CPU (ADE-847 x 80 templates: 67,760 prompts),
so ``--text random`` gives unit vectors of the same shapes instead: FLOPs
and times at a pinned K do not depend on their values (the rule's own K
does, and is arbitrary with random weights either way).

Cost of the tool. ``--untimed CONFIG`` counts a config (parameters, FLOPs)
without the warm-up and timed images (CAT-Seg's ensemble at ViT-L/14 size
is minutes per image on a CPU); ``--flop-images N`` counts FLOPs on the
first N measured images only (CAT-Seg's and a pinned K's count does not
depend on the image); ``--flop-counter dispatch`` counts every row in one
pass with the dispatch counter (fvcore's jit tracing cannot follow
DCP-CLIP's data-dependent K, so 'auto' traces in vain first and counts
DCP-CLIP by dispatch anyway; dispatch does not count normalisations and
resizing, so one counter for all rows keeps their ratio in one convention).
Progress and the wall time of each phase (build,
text, warm-up, timed images, FLOP count) go to stderr and into the JSON.
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
    parser.add_argument('--untimed', nargs='+', default=[],
                        metavar='CONFIG', help='count these configs '
                        '(parameters, FLOPs) without timing them: no '
                        'warm-up or timed images (a path as given or its '
                        'file name, if no other config has it); rows are '
                        'labelled by the shortest path suffix that tells '
                        'configs apart')
    parser.add_argument('--flop-images', type=int, default=None,
                        metavar='N', help='count FLOPs on the first N '
                        'measured images only (default: all)')
    parser.add_argument('--flop-counter', default='auto',
                        choices=('auto', 'jit', 'dispatch'),
                        help='FLOP counter of every row (mmseg_ovss.engine.'
                        'complexity.model_complexity): auto (jit tracing, '
                        'dispatch where tracing fails: DCP-CLIP\'s '
                        'data-dependent K), or one for all rows (dispatch: '
                        'one pass, the same convention for CAT-Seg and '
                        'DCP-CLIP)')
    parser.add_argument('--text', default='encode',
                        choices=('encode', 'random'),
                        help='class embeddings: encode the prompts with '
                        'the text tower (default; banked on disk) or, with '
                        '--random-init, random unit vectors of the same '
                        'shapes')
    parser.add_argument('--text-bank', default=None, metavar='DIR',
                        help='folder of the text-embedding bank (default: '
                        'the text encoder\'s, $OVSS_TEXT_BANK or '
                        '~/.cache/mmseg_ovss/text_bank)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--quiet', action='store_true',
                        help='no progress lines on stderr')
    parser.add_argument('--out', help='write the rows as JSON to this file')
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f'--images {args.images}: give at least 1')
    if args.num_selected and min(args.num_selected) < 1:
        parser.error(f'--num-selected {args.num_selected}: K must be >= 1')
    if args.flop_images is not None and args.flop_images < 1:
        parser.error(f'--flop-images {args.flop_images}: give at least 1 '
                     '(or --no-flops)')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads {args.threads}: give at least 1')
    if args.text == 'random' and not args.random_init:
        parser.error('--text random needs --random-init: trained weights '
                     'give class embeddings that matter (their selection '
                     'decides K)')
    if args.also_dataset == args.dataset:
        parser.error(f'--also-dataset {args.also_dataset} is --dataset; '
                     'give another benchmark')
    for name in args.untimed:
        matched = untimed_matches(name, args.configs)
        if not matched:
            parser.error(f'--untimed {name}: not among the configs '
                         f'{args.configs}; give a config path or its file '
                         'name')
        if len(matched) > 1:
            parser.error(f'--untimed {name}: names {len(matched)} configs '
                         f'({matched}); give one of their paths')
    return args


def untimed_matches(name: str, configs: List[str]) -> List[str]:
    """The configs an ``--untimed`` name picks: the config of that path,
    else those of that file name."""
    exact = [c for c in configs if osp.normpath(c) == osp.normpath(name)]
    return exact or [c for c in configs if osp.basename(c) == name]


def is_untimed(path: str, args) -> bool:
    """Whether ``--untimed`` names the config ``path``."""
    return any(untimed_matches(u, args.configs) == [path]
               for u in args.untimed)


def row_labels(configs: List[str]) -> Dict[str, str]:
    """Config path -> its shortest path suffix that no other config ends
    with (the file name unless two configs share it)."""
    parts = {c: osp.normpath(c).split(osp.sep) for c in configs}
    labels = {}
    for config, mine in parts.items():
        for depth in range(1, len(mine) + 1):
            suffix = mine[-depth:]
            if not any(other[-depth:] == suffix
                       for c, other in parts.items() if c != config):
                break
        labels[config] = osp.join(*suffix)
    return labels


class Progress:
    """Progress lines on stderr, each with the seconds since the start."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f'[efficiency {time.perf_counter() - self.start:7.1f} s] '
                  f'{message}', file=sys.stderr, flush=True)


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
    if args.text_bank:
        cfg.merge_from_dict({'model.text_encoder.text_bank': args.text_bank})
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
                    metas: List[dict], counter: str = 'auto'
                    ) -> Tuple[float, str]:
    """FLOPs (fvcore convention) of one test-time inference, and the
    counter that produced them ('jit' or 'dispatch',
    :func:`mmseg_ovss.engine.complexity.model_complexity`)."""
    from mmseg_ovss.engine.complexity import model_complexity
    wrapper = TestTimeInference(model, metas)
    # model_complexity restores the wrapper's mode on the model afterwards:
    # the model's own (eval), not a fresh module's (train)
    wrapper.train(model.training)
    own = vars(model).get('text_inputs')  # --text random's embeddings
    with torch.no_grad():
        # the vocabulary's embeddings are computed once, outside the count
        text = model.text_inputs()
        model.text_inputs = lambda: text
        try:
            result = model_complexity(wrapper, inputs, counter=counter)
        finally:
            del model.text_inputs
            if own is not None:
                model.text_inputs = own
    return float(result['flops']), result['counter']


# ------------------------------------------------------------------ text
def vocabulary_prompts(model: nn.Module) -> List[str]:
    """Every prompt the text tower encodes for the active vocabulary."""
    templates = model.text_encoder.templates
    return [template(query) for query in model.vocabulary().queries
            for template in templates]


def bank_status(model: nn.Module) -> Optional[dict]:
    """Folder of the text encoder's embedding bank, the vocabulary's
    prompts and how many of them it holds; None without a bank."""
    bank_of = getattr(model.text_encoder, 'text_bank', None)
    if bank_of is None:
        return None
    with torch.no_grad():
        bank = bank_of()
    if bank is None:
        return None
    prompts = vocabulary_prompts(model)
    missing = len(bank.missing(prompts))
    distinct = len(set(prompts))
    return dict(path=str(bank.path), prompts=distinct,
                banked=distinct - missing)


class RandomTextInputs:
    """``model.text_inputs`` for ``--text random``: per vocabulary, unit
    vectors of the shapes the text tower gives (C, D) and (C, T, D) (the
    templates' embeddings, each L2-normalised; the class embedding their
    normalised mean, as in prompt ensembling), float32 on the tower's
    device, seeded."""

    def __init__(self, model: nn.Module, seed: int):
        from mmseg_ovss.models.segmentors.open_vocab import ClassEmbeddings
        self.model = model
        self.seed = seed
        self.make = ClassEmbeddings
        with torch.no_grad():
            probe = model.text_encoder.encode_text(['a photo of a thing.'])
        self.dim, self.device = probe.shape[-1], probe.device
        self.with_templates = bool(getattr(
            model.decode_head, 'uses_template_embeddings', False))
        self.cache: Dict[tuple, tuple] = {}

    def __call__(self):
        classes = self.model.dataset_classes
        if classes not in self.cache:
            generator = torch.Generator().manual_seed(self.seed)
            count = len(self.model.text_encoder.templates)
            per_template = torch.nn.functional.normalize(torch.randn(
                len(classes), count, self.dim, generator=generator), dim=-1)
            embeddings = torch.nn.functional.normalize(
                per_template.mean(dim=1), dim=-1)
            self.cache[classes] = (embeddings.to(self.device),
                                   per_template.to(self.device))
        embeddings, per_template = self.cache[classes]
        return self.make(
            embeddings=embeddings,
            template_embeddings=per_template if self.with_templates
            else None,
            class_names=classes, seen_ids=None, unseen_ids=None,
            logit_scale=self.model.text_encoder.logit_scale)


# ----------------------------------------------------------------- images
def dataset_vocabulary(dataset: str) -> List[str]:
    """The benchmark's class names (read once per benchmark)."""
    if dataset not in _VOCABULARIES:
        _VOCABULARIES[dataset] = read_vocabulary(dataset)
    return list(_VOCABULARIES[dataset])


_VOCABULARIES: Dict[str, List[str]] = {}


def read_vocabulary(dataset: str) -> List[str]:
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


def set_vocabulary(model: nn.Module, dataset: str, args,
                   progress: Progress) -> dict:
    """Make ``dataset``'s classes the active vocabulary and compute their
    embeddings once (untimed; the text encoder caches them). Returns the
    wall time and, with a bank, what it held before."""
    model.set_dataset_classes(dataset_vocabulary(dataset))
    info = dict(dataset=dataset)
    if args.text == 'random':
        progress(f'{dataset}: random class embeddings (--text random)')
    else:
        info['bank'] = bank_status(model)
        bank = info['bank']
        progress(f'{dataset}: encoding the class prompts' + (
            f' ({bank["banked"]} of {bank["prompts"]} in the bank '
            f'{bank["path"]})' if bank else ' (no text bank)'))
    start = time.perf_counter()
    with torch.no_grad():
        model.text_inputs()
    info['seconds'] = time.perf_counter() - start
    return info


def timed_step(model, sample: dict, device: str) -> float:
    """Wall-clock seconds of one ``test_step``."""
    synchronize(device)
    start = time.perf_counter()
    model.test_step(collate(sample))
    synchronize(device)
    return time.perf_counter() - start


def measure(model, cfg, args, datasets: List[str], timed: bool,
            with_flops: bool, progress: Progress, label: str) -> List[dict]:
    """One result per dataset of ``datasets``: mean seconds per image (the
    vocabularies interleaved image by image), GFLOPs per image (the first
    dataset only) and the mean number of classes selected per view
    (DCP-CLIP). The wall time of each phase goes to ``result['wall_s']``
    of the first."""
    wall = dict(text=0.0, warmup=0.0, timed=0.0, flops=0.0)
    vocab = {}
    for dataset in datasets:
        vocab[dataset] = set_vocabulary(model, dataset, args, progress)
        wall['text'] += vocab[dataset]['seconds']
    samples, source = eval_images(cfg, args, datasets[0],
                                  args.images + (1 if timed else 0))
    seconds = {d: [] for d in datasets}
    counts = {d: [] for d in datasets}
    counter = SelectionCounter(model)
    counter.enabled = False
    with torch.no_grad():
        if timed:
            for dataset in datasets:  # caches, allocator, lazy inits
                model.set_dataset_classes(dataset_vocabulary(dataset))
                took = timed_step(model, samples[0], args.device)
                wall['warmup'] += took
                progress(f'{label}: warm-up image on {dataset}: '
                         f'{took:.1f} s')
            for index, sample in enumerate(samples[1:], 1):
                for dataset in datasets:
                    model.set_dataset_classes(dataset_vocabulary(dataset))
                    counter.counts = counts[dataset]
                    counter.enabled = True
                    took = timed_step(model, sample, args.device)
                    counter.enabled = False
                    seconds[dataset].append(took)
                    wall['timed'] += took
                    progress(f'{label}: image {index}/{args.images} on '
                             f'{dataset}: {took:.1f} s')
        flops, counters = [], set()
        if with_flops:
            model.set_dataset_classes(dataset_vocabulary(datasets[0]))
            measured = samples[1:] if timed else samples
            measured = measured[:args.flop_images or len(measured)]
            for index, sample in enumerate(measured, 1):
                start = time.perf_counter()
                data = model.data_preprocessor(collate(sample), False)
                metas = [s.metainfo for s in data['data_samples']]
                if not timed:  # K/view from the counted passes
                    counter.counts = counts[datasets[0]]
                    counter.enabled = True
                count, used = inference_flops(model, data['inputs'], metas,
                                              args.flop_counter)
                counter.enabled = False
                flops.append(count)
                counters.add(used)
                took = time.perf_counter() - start
                wall['flops'] += took
                progress(f'{label}: FLOPs of image {index}/{len(measured)} '
                         f'on {datasets[0]}: {count / 1e9:.1f} G ({used} '
                         f'counter, {took:.1f} s)')
    counter.close()
    results = []
    for dataset in datasets:
        first = dataset == datasets[0]
        results.append(dict(
            dataset=dataset, images=len(seconds[dataset]), source=source,
            selected_per_view=float(np.mean(counts[dataset]))
            if counts[dataset] else None,
            seconds=float(np.mean(seconds[dataset]))
            if seconds[dataset] else None,
            seconds_per_image=seconds[dataset],
            gflops=float(np.mean(flops)) / 1e9 if first and flops else None,
            gflops_per_image=[f / 1e9 for f in flops] if first else [],
            flop_counter=','.join(sorted(counters)) if first and counters
            else None,
            text_bank=vocab[dataset].get('bank')))
    results[0]['wall_s'] = wall
    return results


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


def measure_config(path: str, args, progress: Progress,
                   label: Optional[str] = None) -> List[dict]:
    """The rows of one config: the selection rule's, then (DCP-CLIP) one
    per ``--num-selected`` K, from one built model (``label``: the row
    label, default the file name)."""
    cfg = load_config(path, args)
    label = label or osp.basename(path)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    model = build_model(cfg, args.device)
    build_s = time.perf_counter() - start
    progress(f'{label}: built in {build_s:.1f} s')
    if args.text == 'random':
        model.text_inputs = RandomTextInputs(model, args.seed)
    learnable, total = count_parameters(model)
    selection = getattr(model.decode_head, 'category_selection', None)
    pins = [None]  # the selection rule itself (K measured)
    if args.num_selected and has_selection(cfg) and selection is not None:
        pins += list(args.num_selected)
    timed = not is_untimed(path, args)
    datasets = [args.dataset] + ([args.also_dataset]
                                 if args.also_dataset and timed else [])
    rows = []
    for k in pins:
        if selection is not None:
            # the config's DynamicCategorySelection(fixed_count=K)
            selection.fixed_count = k
        row_label = label + ('' if k is None else f' K={k}')
        row = dict(config=path, label=label, learnable_m=learnable,
                   total_m=total,
                   device=args.device, paper=paper_row(cfg),
                   num_selected=k, dcs=has_selection(cfg), timed=timed,
                   threads=torch.get_num_threads())
        results = measure(model, cfg, args, datasets, timed,
                          not args.no_flops, progress, row_label)
        row['main'] = results[0]
        row['wall_s'] = dict(build=build_s if not rows else 0.0,
                             **results[0].pop('wall_s'))
        if len(results) > 1:
            row['also'] = results[1]
            row['time_ratio_also'] = results[1]['seconds'] / \
                results[0]['seconds']
            progress(f'{row_label}: {args.also_dataset} / {args.dataset} '
                     f'time x{row["time_ratio_also"]:.2f}')
        rows.append(row)
    del model
    return rows


def measure_all(args, progress: Optional[Progress] = None) -> List[dict]:
    """One row per config, and for DCP-CLIP one more per
    ``--num-selected`` K."""
    progress = progress or Progress(args.quiet)
    labels = row_labels(args.configs)
    rows = []
    for path in args.configs:
        rows += measure_config(path, args, progress, labels[path])
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
    # the K at the goal compares counts: only within one counter convention
    catseg = [r for r in catseg
              if not mixed_counters([*pinned, r])]
    if catseg and slope > 0:
        goal = 0.35 * catseg[0]['main']['gflops']
        out['catseg_gflops'] = catseg[0]['main']['gflops']
        out['k_at_goal'] = float((goal - base) / slope)
    paper = pinned[0]['paper']
    if paper and slope > 0:
        out['k_paper'] = float((paper['gflops'] - base) / slope)
    return out


def mixed_counters(rows: List[dict]) -> List[str]:
    """The FLOP counters of ``rows``' main counts when they are not all one
    ('jit' counts normalisations and resizing, 'dispatch' does not, so a
    ratio across the two mixes conventions); [] when they agree."""
    used = sorted({c for r in rows
                   for c in (r['main'].get('flop_counter') or '').split(',')
                   if c})
    return used if len(used) > 1 else []


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


def _label(row: dict) -> str:
    label = row.get('label') or osp.basename(row['config'])
    if row.get('num_selected') is not None:
        label += f' (K pinned to {row["num_selected"]})'
    if not row.get('timed', True):
        label += ' (untimed)'
    return label


def render_wall(rows: List[dict]) -> List[str]:
    """The tool's own wall time per row and phase (where it goes)."""
    phases = ('build', 'text', 'warmup', 'timed', 'flops')
    lines = ['| wall time of this run (s) | ' + ' | '.join(phases) + ' |',
             '|' + '---|' * (len(phases) + 1)]
    for row in rows:
        wall = row['wall_s']
        lines.append('| ' + ' | '.join(
            [_label(row)] + [f'{wall[p]:.1f}' for p in phases]) + ' |')
    return lines


def render(rows: List[dict], args) -> str:
    head = ('| config | learnable (M) | total (M) | K/view | '
            'GFLOPs / image | FLOP counter | s / image |')
    if args.also_dataset:
        head += f' s / image {args.also_dataset} | ratio |'
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for row in rows:
        main, paper = row['main'], row['paper']
        cells = [
            _label(row),
            _fmt(row['learnable_m']) + _deviation(
                row['learnable_m'], paper and paper['learnable']),
            _fmt(row['total_m']) + _deviation(
                row['total_m'], paper and paper['total']),
            _fmt(main.get('selected_per_view')),
            _fmt(main['gflops']), main.get('flop_counter') or '-',
            _fmt(main['seconds'], '.3f')]
        if args.also_dataset:
            cells += [_fmt(row.get('also', {}).get('seconds'), '.3f'),
                      _fmt(row.get('time_ratio_also'), '.2f')]
        lines.append('| ' + ' | '.join(cells) + ' |')
        if paper:
            cells = [f'paper: {paper["method"]} ViT-L/14 (Table II)',
                     _fmt(paper['learnable']), _fmt(paper['total']), '',
                     _fmt(paper['gflops']), '', _fmt(paper['seconds'], '.2f')]
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
            sec = None
            if first['main']['seconds'] and row['main']['seconds']:
                sec = first['main']['seconds'] / row['main']['seconds']
            text = (f'- {_label(row)}: GFLOPs x'
                    f'{_fmt(gf, ".3f")}, time x{_fmt(sec, ".3f")}')
            mixed = mixed_counters([first, row])
            if gf is not None and mixed:
                text += (f' (GFLOPs counted by {" and ".join(mixed)}: two '
                         'conventions; --flop-counter dispatch counts both '
                         'rows in one)')
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
    lines += render_wall(rows)
    lines.append('')
    lines.append('K/view: mean classes the head computed per view (Dynamic '
                 'Category Selection; random weights select arbitrarily)')
    weights = 'random' if args.random_init else 'from the configs'
    text = 'random unit vectors' if args.text == 'random' else 'encoded'
    lines.append(f'images: {rows[0]["main"]["source"]}; device '
                 f'{rows[0]["device"]}; weights: {weights}; class '
                 f'embeddings: {text}; {rows[0]["threads"]} torch threads')
    return '\n'.join(lines)


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure_all(args)
    mixed = mixed_counters([r for r in rows if r['main']['gflops']])
    if mixed:
        print(f'warning: the rows\' FLOPs were counted by {", ".join(mixed)} '
              "(--flop-counter auto falls back to dispatch where jit tracing "
              'fails); their GFLOPs ratios mix two conventions: rerun with '
              '--flop-counter dispatch to count every row in one',
              file=sys.stderr)
    print(render(rows, args))
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as handle:
            json.dump(dict(rows=rows, flops_fit=fit_flops(rows)), handle,
                      indent=1)
    return rows


if __name__ == '__main__':
    main()
