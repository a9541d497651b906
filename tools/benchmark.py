"""Latency, throughput, peak memory and a per-stage breakdown of a segmentor.

    python tools/benchmark.py configs/baselines/sclip_ade.py \
        --random-init --num-images 3 --short-side 448 --num-classes 150
    python tools/benchmark.py configs/freecp/sclip_city.py --random-init \
        --size 2048x1024 --num-classes 1000 --templates single

Images are generated (smoothed noise of ``--size`` W x H, or of
``--short-side`` and ``--aspect``); the vocabulary is the config's class-name
file (or ``--class-file``) cut or cycled to ``--num-classes`` names, with a
class "background" in front of them with ``--background``. Stages are what
the model wraps in ``mmseg_ovss.utils.profiler.profile_stage`` (``text``,
``backbone``, ``head``, ``postprocess``); any segmentor of the package can
be measured.
The text stage runs once per vocabulary and is reported separately.

``--baseline OTHER_CONFIG`` times a second config on the same images and
random weights, alternating the two per image (A B, B A, ...) so that a
noisy machine slows both alike, and reports ``ratio`` = this config's time
over the baseline's (of the means, of the medians and per image)::

    python tools/benchmark.py configs/freecp/sclip_ade.py \
        --baseline configs/freecp/benchmark/sclip_ade_base.py \
        --random-init --num-images 10 --templates single

``--train`` times training steps instead, on ``--batch-size`` generated
images with random labels of ``--num-classes`` classes (the vocabulary of an
open-vocabulary segmentor; a fixed-class model uses its head's classes): for
a trainable config the whole model (data preprocessor, forward with the
loss, backward, the optimiser step of the config's ``optim_wrapper``,
``--amp`` for mixed precision); it reports s/step, images/s, peak memory,
the time per stage (preprocess / forward / backward / optimizer) and per
top-level module of the forward, the trainable parameters, the gradient and
optimiser-state memory and how many frozen parameters got a gradient (must
be 0). ``--configs A B ...`` times several configs in one process on the
same images, alternating per step, with ratios to A::

    python tools/benchmark.py --train --configs configs/zegclip/A.py \
        configs/cliprc/B.py --random-init --crop-size 512 --batch-size 2 \
        --num-classes 156 --num-images 5

A training-free CLIP segmentor trains its image backbone alone (outputs in
the projected space its head reads), with ``--freeze`` and
``--prompts K`` (deep visual prompts) overriding its freeze policy::

    python tools/benchmark.py configs/baselines/sclip_ade.py --random-init \
        --train --prompts 10 --size 512x512 --batch-size 2 --num-images 3
"""
import argparse
import json
import os.path as osp
import resource
import statistics
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))
from mmseg_ovss.utils.errors import OVSSConfigError  # noqa: E402
from mmseg_ovss.utils.paths import resolve_data_path  # noqa: E402
from mmseg_ovss.utils.profiler import StageProfiler  # noqa: E402


def image_size(text: str):
    """'2048x1024' -> (height, width) = (1024, 2048)."""
    parts = text.lower().replace('*', 'x').split('x')
    try:
        width, height = (int(v) for v in parts)
    except ValueError:
        width = height = 0
    if len(parts) != 2 or width < 1 or height < 1:
        raise argparse.ArgumentTypeError(
            f'--size {text!r} is not WIDTHxHEIGHT with positive integers, '
            'e.g. 2048x1024')
    return height, width


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', default=None,
                        help='the config (with --train, or --configs)')
    parser.add_argument('--num-images', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1,
                        help='untimed images before measuring')
    parser.add_argument('--short-side', type=int, default=448)
    parser.add_argument('--aspect', type=float, default=4 / 3,
                        help='width / height of the generated images')
    parser.add_argument('--size', type=image_size, default=None,
                        metavar='WxH', help='size of the generated images, '
                        'e.g. 2048x1024 (overrides --short-side/--aspect)')
    parser.add_argument('--images', nargs='+', default=None, metavar='PATH',
                        help='real images instead of generated ones, each '
                        'resized to --short-side (aspect kept); '
                        '--num-images is then how many of them are timed '
                        '(after --warmup of them), cycling through the list')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='vocabulary size (default: every name of the '
                        'class file)')
    parser.add_argument('--class-file', default=None)
    parser.add_argument('--text-bank', default='auto', metavar='auto|off|DIR',
                        help="the text encoder's embedding bank on disk: "
                        "'auto' (the config's: $OVSS_TEXT_BANK or "
                        "~/.cache/mmseg_ovss/text_bank), 'off' (every "
                        "prompt through the tower), or a folder; the JSON's "
                        'text_bank says how many prompts it already held')
    parser.add_argument('--background', action='store_true',
                        help='add a background class (class 0) to the '
                        '--num-classes names, as VOC21 / PC60 have')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu')
    parser.add_argument('--random-init', action='store_true',
                        help='random weights (CLIP and vision model)')
    parser.add_argument('--model-name', help='override the CLIP architecture')
    parser.add_argument('--templates', help="override the prompt templates "
                        "(e.g. 'single' to time the image path without the "
                        "80-template text encoding)")
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random weights (--random-init), so '
                        'that two configs are timed on the same model')
    parser.add_argument('--baseline', help='a second config timed on the '
                        'same images, alternating with CONFIG; adds the '
                        'time ratio CONFIG / BASELINE and the fraction of '
                        'pixels where both predict the same label (peak '
                        'memory then covers both models)')
    parser.add_argument('--json', help='write the results to this file')
    parser.add_argument('--flops', choices=('each', 'first', 'none'),
                        default='each', help='count FLOPs per stage (one '
                        'multiply-add = 1) in an untimed pass over each '
                        'timed image (each), the first one (first: exact '
                        'only for models whose work does not depend on '
                        'the image), or not at all')
    parser.add_argument('--precision', choices=('fp32', 'bf16', 'auto'),
                        default=None, help="the dense path's precision "
                        "(the segmentor's 'precision' option; the matmul "
                        "fraction is taken against the rate of that dtype)")
    parser.add_argument('--matmul-shape', type=int, nargs=3,
                        default=(1024, 768, 3072), metavar=('M', 'K', 'N'),
                        help='shape of the measured matrix product: (M, K) '
                        'tokens times a (K, N) weight')
    parser.add_argument('--matmul-repeats', type=int, default=5)
    train = parser.add_argument_group(
        'training mode (--train)', 'time training steps instead of '
        'inference: the whole model for a trainable segmentor (generated '
        'labels), the image backbone alone for a training-free one')
    train.add_argument('--train', action='store_true',
                       help='time training steps (data preprocessor, '
                       'forward with the loss, backward, optimiser step of '
                       'the config\'s optim_wrapper); --num-images is the '
                       'number of steps')
    train.add_argument('--batch-size', type=int, default=2,
                       help='images per training step')
    train.add_argument('--crop-size', type=int, default=None, metavar='N',
                       help='N x N training crops (same as --size NxN)')
    train.add_argument('--configs', nargs='+', default=None,
                       metavar='CONFIG',
                       help='time several configs in one process, '
                       'alternating per step; ratios are to the first')
    train.add_argument('--amp', action='store_true',
                       help='mixed precision (float16 on GPU, bfloat16 on '
                       'CPU) through the config\'s optim_wrapper')
    train.add_argument('--freeze', default=None,
                       help="override the backbone's freeze policy ('all', "
                       "'none', 'attn_qv')")
    train.add_argument('--prompts', type=int, default=None, metavar='K',
                       help='add deep visual prompts of K tokens per block '
                       '(DeepVisualPrompts) to the backbone')
    train.add_argument('--drop-path-rate', type=float, default=None,
                       help="override the backbone's drop_path_rate")
    args = parser.parse_args(argv)
    if args.config is None and not args.configs:
        parser.error('give a CONFIG (or --train --configs A B ...)')
    if args.configs and not args.train:
        parser.error('--configs is for --train; use CONFIG --baseline OTHER '
                     'for inference')
    if args.images and args.train:
        parser.error('--images is for inference; --train uses generated '
                     'images and labels')
    if args.warmup < 0:
        parser.error(f'--warmup {args.warmup}: the number of untimed images '
                     'must be >= 0')
    if args.num_classes is not None and args.num_classes < 1:
        parser.error(f'--num-classes {args.num_classes}: give at least 1 '
                     'class, or leave it out for every name of the class '
                     'file')
    if args.images and args.size:
        parser.error('--size sets the size of generated images; --images '
                     'are resized to --short-side (aspect kept): drop --size '
                     'or --images')
    if args.config is None:
        args.config = args.configs[0]
    if args.crop_size:
        args.size = (args.crop_size, args.crop_size)
    return args


def build_model(args, config: Optional[str] = None):
    """Build ``config`` (default ``args.config``) with the tool's overrides."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    import mmseg_ovss  # noqa: F401
    cfg = Config.fromfile(config or args.config)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    torch.manual_seed(args.seed)  # the same random model for every config
    model_cfg = cfg.model
    if args.random_init and model_cfg.get('blip', {}).get(
            'pretrained', '') is None:
        model_cfg.blip.seed = args.seed
    if 'clip' in model_cfg:
        if args.random_init:
            model_cfg.clip.random_init = True
            model_cfg.clip.seed = args.seed  # the loader seeds its weights
        if args.model_name:
            model_cfg.clip.model_name = args.model_name
    if args.templates:
        if 'text_encoder' in model_cfg:
            model_cfg.text_encoder.templates = args.templates
        elif 'text' in model_cfg:
            model_cfg.text.templates = args.templates
    text_bank = getattr(args, 'text_bank', 'auto')
    if text_bank != 'auto' and 'text_encoder' in model_cfg:
        model_cfg.text_encoder.text_bank = \
            None if text_bank == 'off' else text_bank
    backbone = model_cfg.get('backbone', None)
    strategy = backbone.get('dense_strategy', None) \
        if isinstance(backbone, dict) else None
    strategy = strategy or model_cfg.get('strategy', None)
    if args.random_init and isinstance(strategy, dict) and \
            strategy.get('type') == 'ProxyCLIP':
        strategy.random_init = True
        strategy.seed = args.seed
    if args.train:
        apply_train_overrides(model_cfg, args)
    apply_precision(model_cfg, args)
    model = MODELS.build(model_cfg).to(args.device)
    return cfg, model.train(args.train)


def accepts_precision(model_cfg) -> bool:
    """Whether the config's segmentor class takes a ``precision`` option."""
    import inspect

    from mmseg.registry import MODELS
    cls = MODELS.get(model_cfg.get('type'))
    if cls is None:
        return False
    params = inspect.signature(cls.__init__).parameters
    return 'precision' in params


def apply_precision(model_cfg, args) -> None:
    """``--precision``: set ``model.precision`` where the segmentor has the
    option; without it the model runs as built (fp32) and the result says
    so (``precision_note``)."""
    args.precision_note = None
    if args.precision is None:
        return
    if accepts_precision(model_cfg):
        model_cfg.precision = args.precision
        return
    args.precision_note = (
        f'--precision {args.precision}: {model_cfg.get("type")} has no '
        "'precision' option in this checkout (it comes with the "
        'precision switch of the dense path); the model runs in float32 '
        'and the matmul fraction is taken against the float32 rate')
    if args.precision != 'fp32':
        print('warning: ' + args.precision_note, file=sys.stderr)


def run_dtype(model, args) -> torch.dtype:
    """The dtype whose matmul rate the run is compared with: the model's
    resolved ``precision`` (its ``compute_dtype(device)`` where it has
    one), else float32."""
    if not getattr(args, 'precision_note', None) and \
            callable(getattr(model, 'compute_dtype', None)):
        return model.compute_dtype(torch.device(args.device))
    if getattr(args, 'precision_note', None) or args.precision is None:
        value = getattr(model, 'precision', None)
    else:
        value = getattr(model, 'precision', args.precision)
    if isinstance(value, torch.dtype):
        return value
    if value in ('bf16', 'bfloat16'):
        return torch.bfloat16
    if value in ('fp16', 'float16'):
        return torch.float16
    if value == 'auto':  # unresolved by the model: its weights tell
        params = [p.dtype for p in model.parameters()]
        return max(set(params), key=params.count) if params else \
            torch.float32
    return torch.float32


def apply_train_overrides(model_cfg, args) -> None:
    """``--freeze``, ``--prompts``, ``--drop-path-rate`` on the backbone."""
    overrides = {}
    if args.freeze is not None:
        overrides['freeze'] = args.freeze
    if args.prompts is not None:
        overrides['prompts'] = dict(type='DeepVisualPrompts',
                                    num_tokens=args.prompts)
    if args.drop_path_rate is not None:
        overrides['drop_path_rate'] = args.drop_path_rate
    if overrides and not isinstance(model_cfg.get('backbone'), dict):
        raise OVSSConfigError(
            f'--freeze/--prompts/--drop-path-rate need a model with a '
            f'backbone config; {model_cfg.get("type")} has none')
    if overrides:
        model_cfg.backbone.update(overrides)
    if model_cfg.get('type') == 'CLIPDenseSegmentor':
        # trained alone, the backbone's outputs are in the space its head
        # reads (forward_dense projects: ln_post + proj), so every CLIP
        # weight of the tower is on the path and gets its gradient
        model_cfg.backbone.setdefault('out_space', 'projected')


def vocabulary(cfg, args) -> List[str]:
    path = args.class_file or cfg.model.get('text', {}).get('class_names')
    path = path or 'data/class_names/ade150.txt'
    lines = [ln.strip() for ln in resolve_data_path(path).read_text()
             .splitlines() if ln.strip()]
    count = len(lines) if args.num_classes is None else args.num_classes
    names = [lines[i % len(lines)] + ('' if i < len(lines) else f' {i}')
             for i in range(count)]
    return names


def config_templates(cfg) -> Optional[object]:
    """The prompt templates of a config: ``model.text_encoder.templates``
    (or an older config's ``model.text.templates``)."""
    for key in ('text_encoder', 'text'):
        part = cfg.model.get(key)
        if isinstance(part, dict) and part.get('templates') is not None:
            return part['templates']
    return None


def text_bank_status(model) -> Optional[Dict]:
    """``path`` of the text encoder's bank file, the vocabulary's distinct
    ``prompts`` and how many the bank holds (``banked``); None without a
    bank (off, trainable tower, no text encoder)."""
    encoder = getattr(model, 'text_encoder', None)
    bank_of = getattr(encoder, 'text_bank', None)
    if bank_of is None or not hasattr(model, 'vocabulary'):
        return None
    with torch.no_grad():
        bank = bank_of()
    if bank is None:
        return None
    prompts = list(dict.fromkeys(
        template(query) for query in model.vocabulary().queries
        for template in encoder.templates))
    return dict(path=str(bank.path), prompts=len(prompts),
                banked=len(prompts) - len(bank.missing(prompts)))


def make_images(count: int, height: int, width: int) -> List[torch.Tensor]:
    """Smoothed-noise uint8 BGR images (C, H, W)."""
    import cv2
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        noise = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3),
                             dtype=np.uint8)
        image = cv2.resize(noise, (width, height),
                           interpolation=cv2.INTER_CUBIC)
        images.append(torch.from_numpy(image).permute(2, 0, 1).contiguous())
    return images


def read_image(path: str, short_side: Optional[int] = None,
               keep_ratio_scale: Optional[tuple] = None,
               option: str = '--images') -> torch.Tensor:
    """A photo as a uint8 BGR (C, H, W) tensor, aspect kept: resized so that
    its shorter side is ``short_side``, or rescaled to fit
    ``keep_ratio_scale`` as a test pipeline's keep-ratio ``Resize`` does
    (``mmcv.imrescale``). Used by this tool and by
    ``tools/dev/authors_code/side_by_side.py``."""
    import cv2
    if (short_side is None) == (keep_ratio_scale is None):
        raise ValueError('read_image: pass exactly one of short_side and '
                         'keep_ratio_scale')
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise OVSSConfigError(
            f'{option}: {path!r} is not a readable image file (cv2 could '
            'not decode it); pass JPEG/PNG paths, e.g. data/samples/cat.jpg')
    if keep_ratio_scale is not None:
        import mmcv
        image = mmcv.imrescale(image, tuple(keep_ratio_scale))
    else:
        height, width = image.shape[:2]
        scale = short_side / min(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def image_metainfo(image: torch.Tensor) -> Dict:
    """The metainfo of an unpadded (C, H, W) test image."""
    shape = tuple(image.shape[-2:])
    return dict(ori_shape=shape, img_shape=shape, pad_shape=shape,
                padding_size=[0, 0, 0, 0])


def inference_inputs(args) -> List[tuple]:
    """(image, metainfo) pairs: ``--warmup`` untimed ones, then
    ``--num-images`` timed ones; generated images, or ``--images``
    cycled."""
    count = args.warmup + args.num_images
    if args.images:
        photos = [read_image(path, args.short_side) for path in args.images]
        images = [photos[i % len(photos)] for i in range(count)]
    else:
        if args.size:
            height, width = args.size
        else:
            height = args.short_side
            width = max(height, round(height * args.aspect))
        images = make_images(count, height, width)
    return [(image, image_metainfo(image)) for image in images]


def label_agreement(labels: List[torch.Tensor],
                    others: List[torch.Tensor]) -> Dict:
    """Fraction of pixels with the same predicted label, per image, their
    mean and their minimum (two models on the same images; used by this
    tool and by ``tools/dev/authors_code/side_by_side.py``)."""
    if len(labels) != len(others) or not labels:
        raise ValueError(
            f'label_agreement: {len(labels)} and {len(others)} label maps; '
            'pass the same, non-zero number of maps for both models')
    for a, b in zip(labels, others):
        if a.shape != b.shape:
            raise ValueError(
                f'label_agreement: label maps of shapes {tuple(a.shape)} '
                f'and {tuple(b.shape)}; compare maps of the same image')
    per_image = [float((a == b).float().mean()) for a, b in
                 zip(labels, others)]
    return dict(per_image=per_image,
                mean=sum(per_image) / len(per_image), min=min(per_image))


def peak_memory_mb(device: str) -> Dict[str, float]:
    out = {'cpu_peak_rss_mb':
           resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith('cuda'):
        out['cuda_max_allocated_mb'] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_one(model, image, metainfo):
    """The (H, W) predicted labels of one image (also the step that
    ``tools/dev/authors_code/side_by_side.py`` times)."""
    from mmseg.structures import SegDataSample
    sample = SegDataSample(metainfo=metainfo)
    data = model.data_preprocessor(dict(inputs=[image],
                                        data_samples=[sample]), False)
    with torch.no_grad():
        samples = model.predict(data['inputs'], data['data_samples'])
    return samples[0].pred_sem_seg.data[0]


class Subject:
    """One config under measurement: its model, vocabulary and timings."""

    def __init__(self, config: str, args):
        self.config = config
        self.device = args.device
        self.cfg, self.model = build_model(args, config)
        self.names = vocabulary(self.cfg, args)
        if hasattr(self.model, 'set_vocabulary'):
            if args.background:
                self.names = ['background'] + self.names
            self.model.set_vocabulary(
                self.names, background_class=0 if args.background else None)
        self.profiler = StageProfiler()
        self.latencies: List[float] = []
        self.labels: List[torch.Tensor] = []  # of the timed images
        self.text_seconds = 0.0
        self.text_bank: Optional[Dict] = None
        self.stage_flops: List[Dict[str, int]] = []
        self.dtype = run_dtype(self.model, args)
        self.precision_note = args.precision_note

    def _sync(self):
        if self.device.startswith('cuda'):
            torch.cuda.synchronize()

    def encode_vocabulary(self):
        self.text_bank = text_bank_status(self.model)  # before: the hits
        with self.profiler:
            start = time.perf_counter()
            if hasattr(self.model, 'vocabulary_embeddings'):
                self.model.vocabulary_embeddings()  # encode and cache
            self._sync()
            self.text_seconds = time.perf_counter() - start

    def run(self, image, meta, timed: bool = True):
        with self.profiler:
            start = time.perf_counter()
            labels = run_one(self.model, image, meta)
            self._sync()
            if timed:
                self.latencies.append(time.perf_counter() - start)
                self.labels.append(labels.cpu())

    def count_flops(self, image, meta):
        """FLOPs per stage of one untimed ``predict`` on ``image`` (the
        forward that is timed, counted at torch's dispatcher)."""
        from mmseg_ovss.engine.complexity import StageFlopCounter
        profiler = StageProfiler(cuda_sync=False)
        with profiler, StageFlopCounter(profiler) as counter:
            run_one(self.model, image, meta)
        self.stage_flops.append(dict(counter.stages))

    def flop_result(self, stages_s: Dict[str, float], latency: float,
                    rates: Dict[str, Dict]) -> Dict:
        """GFLOPs per image and stage (mean over the counted images),
        GFLOP/s per stage (its mean GFLOPs over its mean seconds) and the
        fraction of the measured matmul rate of the run's dtype."""
        if not self.stage_flops:
            return {}
        count = len(self.stage_flops)
        names = sorted({n for flops in self.stage_flops for n in flops} |
                       set(stages_s))
        gflops = {n: sum(f.get(n, 0) for f in self.stage_flops) / count /
                  1e9 for n in names}
        total = sum(sum(f.values()) for f in self.stage_flops) / count / 1e9
        dtype = str(self.dtype).replace('torch.', '')
        rate = rates.get(dtype, {}).get('gflop_per_s')
        per_s = {n: gflops[n] / stages_s[n] for n in names
                 if stages_s.get(n)}
        out = dict(gflops_per_image=total, stages_gflops_per_image=gflops,
                   flops_counted_images=count, gflop_per_s=total / latency,
                   stages_gflop_per_s=per_s, run_dtype=dtype,
                   matmul_rate_gflop_per_s=rate)
        if rate:
            out['matmul_fraction'] = total / latency / rate
            out['stages_matmul_fraction'] = {n: v / rate
                                             for n, v in per_s.items()}
        return out

    def detail_result(self, num: int) -> Dict:
        """Per image: seconds of the timed details (parts of a stage, e.g.
        FreeCP's ``crop_encoder`` inside ``head``) and their item counts
        (``crop_encoder``: crops encoded; ``crops_asked``: before the
        deduplication). Empty when the model times no detail."""
        profiler = self.profiler
        if not profiler.detail_items and not profiler.detail_seconds:
            return {}
        return dict(
            details_s_per_image={name: seconds / num for name, seconds in
                                 sorted(profiler.detail_seconds.items())},
            details_items_per_image={name: items / num for name, items in
                                     sorted(profiler.detail_items.items())})

    def result(self, args, image_size, rates=None) -> Dict:
        num = len(self.latencies)
        total = sum(self.latencies)
        stages = {name: seconds / num
                  for name, seconds in sorted(self.profiler.seconds.items())}
        # 'text' is the per-image vocabulary lookup: the encoding itself
        # ran before the timed images and is reported as text_encoding_s.
        return dict(
            config=self.config, device=self.device,
            templates=args.templates or config_templates(self.cfg),
            image_size=list(image_size), num_classes=len(self.names),
            background=args.background,
            num_images=num, random_init=args.random_init,
            threads=torch.get_num_threads(),
            text_encoding_s=self.text_seconds,
            text_bank=self.text_bank,
            latency_s_mean=total / num,
            latency_s_median=statistics.median(self.latencies),
            latency_s_min=min(self.latencies),
            latencies_s=self.latencies,
            images_per_s=num / total,
            stages_s_per_image=stages,
            **self.detail_result(num),
            precision=args.precision, precision_note=self.precision_note,
            **self.flop_result(stages, total / num, rates or {}))


class TrainSubject:
    """Training steps of one config: the whole model (``train_step``'s
    stages on generated labels, the config's ``optim_wrapper``) or, for a
    training-free CLIP segmentor, its image backbone alone (a
    squared-feature objective over every output, AdamW).

    Reports what a step stores: the trainable parameters, the gradients
    present after ``backward`` (frozen weights must have none) and the
    optimiser state, besides latency, peak memory and the time per stage
    (``preprocess``, ``forward``, ``backward``, ``optimizer``) and per
    top-level module of the forward (``ModuleTimer``).
    """

    def __init__(self, args, config: Optional[str] = None):
        from mmengine.optim import OptimWrapper, build_optim_wrapper

        from mmseg_ovss.engine.amp import apply_amp
        from mmseg_ovss.engine.module_timer import ModuleTimer
        from mmseg_ovss.models.segmentors.clip_segmentor import \
            CLIPDenseSegmentor
        self.args = args
        self.config = config or args.config
        self.cfg, model = build_model(args, self.config)
        self.backbone_only = isinstance(model, CLIPDenseSegmentor)
        self.module = model.backbone if self.backbone_only else model
        self.model = model
        self.names = vocabulary(self.cfg, args)
        self.open_vocab = hasattr(model, 'set_dataset_classes')
        if not self.backbone_only and self.open_vocab:
            model.set_dataset_classes(self.names)
        self.num_labels = self._num_labels()
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise OVSSConfigError(
                f'{self.config}: nothing to train (every parameter is '
                'frozen); use --freeze none, --prompts K or a trainable '
                'config')
        wrapper_cfg = self.cfg.get('optim_wrapper')
        self.amp_note = None
        if self.backbone_only or not wrapper_cfg:
            self.optim = OptimWrapper(torch.optim.AdamW(params, lr=1e-5))
            self.optimizer_source = 'AdamW(lr=1e-5)'
            if args.amp:
                raise OVSSConfigError(
                    f'--amp needs a config with an optim_wrapper; '
                    f'{self.config} has none')
        else:
            self.amp_note = apply_amp(self.cfg, args.amp)
            self.optim = build_optim_wrapper(model, self.cfg.optim_wrapper)
            self.optimizer_source = 'config optim_wrapper ' + type(
                self.optim).__name__ + '/' + type(
                    self.optim.optimizer).__name__
        self.trainable_ids = {id(p) for p in params}
        self.profiler = StageProfiler()
        self.timer = ModuleTimer(model if not self.backbone_only else
                                 torch.nn.ModuleDict(dict(
                                     backbone=model.backbone)))
        self.latencies: List[float] = []
        self.peak_cuda_mb = 0.0

    def _num_labels(self) -> int:
        if self.backbone_only:
            return len(self.names)
        if self.open_vocab:
            return self.model.num_classes
        head = getattr(self.model, 'decode_head', None)
        count = getattr(head, 'num_classes', None) or len(self.names)
        return count

    def _batch(self, images, height, width):
        from mmseg.structures import SegDataSample
        from mmengine.structures import PixelData
        generator = torch.Generator().manual_seed(len(self.latencies))
        samples = []
        for _ in images:
            labels = torch.randint(0, self.num_labels, (1, height, width),
                                   generator=generator)
            sample = SegDataSample(metainfo=dict(
                ori_shape=(height, width), img_shape=(height, width),
                pad_shape=(height, width), padding_size=[0, 0, 0, 0]))
            sample.gt_sem_seg = PixelData(data=labels)
            samples.append(sample)
        return dict(inputs=list(images), data_samples=samples)

    def _backbone_step(self, data):
        from mmseg_ovss.utils.profiler import profile_stage
        # normalised and stacked as at test time: a training-free config's
        # preprocessor sets no training size (mmseg's stack_batch needs
        # one), and the generated images of a step share their size
        with profile_stage('preprocess'):
            inputs = self.model.data_preprocessor(data, False)['inputs']
        with profile_stage('forward'):
            outputs = self.module(inputs)
            loss = sum(t.float().pow(2).mean() for out in outputs
                       for t in (out if isinstance(out, (list, tuple))
                                 else [out]))
        with profile_stage('backward'):
            self.optim.backward(loss)
        return loss

    def step(self, images, height, width, timed=True):
        from mmseg_ovss.utils.profiler import profile_stage
        data = self._batch(images, height, width)
        cuda = self.args.device.startswith('cuda')
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with self.profiler, self.timer:
            start = time.perf_counter()
            if self.backbone_only:
                loss = self._backbone_step(data)
            else:
                with profile_stage('preprocess'):
                    data = self.model.data_preprocessor(data, True)
                with profile_stage('forward'), \
                        self.optim.optim_context(self.model):
                    losses = self.model(**data, mode='loss')
                    loss, _ = self.model.parse_losses(losses)
                with profile_stage('backward'):
                    self.optim.backward(loss)
            self.grad_mb = sum(p.grad.numel() * p.grad.element_size()
                               for p in self.module.parameters()
                               if p.grad is not None) / 2**20
            self.frozen_with_grad = sum(
                1 for p in self.module.parameters()
                if p.grad is not None and id(p) not in self.trainable_ids)
            with profile_stage('optimizer'):
                self.optim.step()
                self.optim.zero_grad()
            if cuda:
                torch.cuda.synchronize()
            if timed:
                self.latencies.append(time.perf_counter() - start)
        if cuda and timed:
            self.peak_cuda_mb = max(self.peak_cuda_mb,
                                    torch.cuda.max_memory_allocated() / 2**20)
        self.last_loss = float(loss.detach())

    def reset(self):
        self.profiler.reset()
        self.timer.reset()

    def result(self, image_size) -> Dict:
        args = self.args
        num = len(self.latencies)
        params = list(self.module.parameters())
        state = self.optim.optimizer.state.values()
        param_mb = sum(p.numel() * p.element_size() for p in params) / 2**20
        state_mb = sum(t.numel() * t.element_size() for s in state
                       for t in s.values() if torch.is_tensor(t)) / 2**20
        out = dict(
            config=self.config, device=args.device, mode='train',
            trained=('backbone' if self.backbone_only else 'model'),
            freeze=getattr(self.model.backbone, 'freeze', None)
            if hasattr(self.model, 'backbone') else None,
            prompts=args.prompts, batch_size=args.batch_size,
            image_size=list(image_size), num_classes=self.num_labels,
            num_steps=num, random_init=args.random_init,
            threads=torch.get_num_threads(),
            optimizer=self.optimizer_source, amp=self.amp_note,
            params_total_m=sum(p.numel() for p in params) / 1e6,
            params_trainable_m=sum(p.numel() for p in params
                                   if p.requires_grad) / 1e6,
            param_mb=param_mb, grad_mb=self.grad_mb,
            frozen_params_with_grad=self.frozen_with_grad,
            optimizer_state_mb=state_mb,
            model_state_mb=param_mb + self.grad_mb + state_mb,
            last_loss=self.last_loss,
            step_s_mean=sum(self.latencies) / num,
            step_s_median=statistics.median(self.latencies),
            step_s_min=min(self.latencies),
            steps_s=self.latencies,
            images_per_s=num * args.batch_size / sum(self.latencies),
            stages_s_per_step={name: seconds / num for name, seconds in
                               sorted(self.profiler.seconds.items())},
            modules_s_per_step={name: self.timer.seconds[name] / num
                                for name in self.timer.children
                                if name in self.timer.seconds})
        if self.peak_cuda_mb:
            out['cuda_peak_allocated_mb'] = self.peak_cuda_mb
        return out


def train_main(args) -> Dict:
    """``--train``: time ``--num-images`` training steps of each config,
    alternating the configs' order per step (A B, B A, ...)."""
    configs = list(args.configs or [args.config])
    subjects = [TrainSubject(args, config) for config in configs]
    if args.size:
        height, width = args.size
    else:
        height = width = args.short_side
    images = make_images(args.batch_size * (args.warmup + args.num_images),
                         height, width)
    batches = [images[i:i + args.batch_size]
               for i in range(0, len(images), args.batch_size)]
    for subject in subjects:
        for batch in batches[:args.warmup]:
            subject.step(batch, height, width, timed=False)
        subject.reset()
    for index, batch in enumerate(batches[args.warmup:]):
        for subject in (subjects if index % 2 == 0 else subjects[::-1]):
            subject.step(batch, height, width)
    results = [subject.result((height, width)) for subject in subjects]
    result = results[0]
    first = results[0]
    if len(results) > 1:
        for other in results[1:]:
            other['ratio_to_first'] = dict(
                of_means=other['step_s_mean'] / first['step_s_mean'],
                of_medians=other['step_s_median'] / first['step_s_median'],
                per_step=[a / b for a, b in zip(other['steps_s'],
                                                first['steps_s'])],
                model_state_mb=other['model_state_mb'] /
                first['model_state_mb'])
        result['compared'] = results[1:]
    result.update(peak_memory_mb(args.device))
    return result


def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args.num_images < 1:
        raise OVSSConfigError('--num-images must be at least 1')
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train:
        if args.baseline:
            raise OVSSConfigError(
                '--train compares configs with --configs A B (ratios to '
                'A); --baseline is for inference')
        return report(train_main(args), args)
    subjects = [Subject(args.config, args)]
    if args.baseline:
        subjects.append(Subject(args.baseline, args))
    inputs = inference_inputs(args)
    height, width = inputs[0][0].shape[-2:]
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    for subject in subjects:
        subject.encode_vocabulary()
        for image, meta in inputs[:args.warmup]:
            subject.run(image, meta, timed=False)
        subject.profiler.reset()
    rates = matmul_rates(args) if args.flops != 'none' else {}
    for index, (image, meta) in enumerate(inputs[args.warmup:]):
        # alternate the order so that neither config always runs first
        for subject in (subjects if index % 2 == 0 else subjects[::-1]):
            subject.run(image, meta)
    counted = {'each': inputs[args.warmup:],
               'first': inputs[args.warmup:args.warmup + 1],
               'none': []}[args.flops]
    for image, meta in counted:  # untimed: counting slows the forward
        for subject in subjects:
            subject.count_flops(image, meta)
    result = subjects[0].result(args, (height, width), rates)
    if args.images:
        result['image_files'] = list(args.images)
        result['image_sizes'] = [list(image.shape[-2:])
                                 for image, _ in inputs[args.warmup:]]
    if rates:
        result['matmul_rate'] = rates
        result['flop_convention'] = FLOP_CONVENTION
    if args.baseline:
        base = subjects[1].result(args, (height, width), rates)
        result['baseline'] = base
        result['ratio'] = dict(
            of_means=result['latency_s_mean'] / base['latency_s_mean'],
            of_medians=result['latency_s_median'] / base['latency_s_median'],
            per_image=[a / b for a, b in zip(subjects[0].latencies,
                                             subjects[1].latencies)])
        result['label_agreement'] = label_agreement(subjects[0].labels,
                                                    subjects[1].labels)
    result.update(peak_memory_mb(args.device))
    return report(result, args)


FLOP_CONVENTION = (
    'one multiply-add = 1 FLOP (fvcore / mmengine convention, as '
    'mmseg_ovss.engine.complexity); counted at torch\'s dispatcher on '
    'the timed predict forward: matrix products, convolutions and '
    'attention (not normalisations, element-wise ops or resizing); the '
    'matmul rate is in the same unit')


def matmul_rates(args) -> Dict[str, Dict]:
    """The machine's matrix-product rate (``measure_matmul_rate``) per
    dtype at ``--matmul-shape``, with the run's thread count: float32 and
    bfloat16 (and float16 on CUDA)."""
    from mmseg_ovss.engine.complexity import measure_matmul_rate
    dtypes = [torch.float32, torch.bfloat16]
    if args.device.startswith('cuda'):
        dtypes.append(torch.float16)
    rates = {}
    for dtype in dtypes:
        rate = measure_matmul_rate(dtype, tuple(args.matmul_shape),
                                   repeats=args.matmul_repeats,
                                   device=args.device)
        rates[rate['dtype']] = rate
        print(f'matmul rate {rate["dtype"]} {rate["shape"]}: '
              f'{rate["gflop_per_s"]:.1f} GFLOP/s (multiply-adds) with '
              f'{rate["threads"]} threads', file=sys.stderr)
    return rates


def report(result: Dict, args) -> Dict:
    """Print the results as JSON (and write them to ``--json``)."""
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
