"""Time the package's segmentors against the authors' code, side by side.

    python tools/dev/authors_code/side_by_side.py --repo /path/to/SCLIP \
        --config configs/baselines/sclip_ade.py --size 448x336 \
        --num-classes 150 --num-images 4 --threads 2
    python tools/dev/authors_code/side_by_side.py --method freecp \
        --repo /path/to/FreeCP --config configs/freecp/gem_ade.py \
        --size 597x448 --num-classes 150 --num-images 2 --threads 2

``--repo`` is a LOCAL clone of the authors' repository (wangf3014/SCLIP for
``--method sclip``, chenqi1126/FreeCP for ``--method freecp``; this tool
never downloads it). Both models get the same random weights: the package's
seeded random CLIP (``--seed``) is written as an OpenAI-format state dict,
which the authors' code builds its model from (SCLIP: ``clip.load(path)``;
FreeCP: see ``freecp_authors.py``). Both run the same images (generated, or
``--images`` resized as the config's test pipeline), the same vocabulary
(one name per class, written to a name file for the authors' code) and the
same windows (taken from our config's ``test_cfg``), alternating per image
(ours, theirs; theirs, ours; ...). It prints the time ratio (ours / theirs),
the fraction of pixels with the same label and, for FreeCP, the crops each
side classified. ``--profile K`` then runs the first timed image once more
on each side under ``torch.profiler`` and reports each side's K operators
of most self CPU time (where each side's time goes). A developer tool: not
part of the test suite.
"""
import argparse
import contextlib
import importlib
import json
import os.path as osp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.join(HERE, '..', '..', '..')
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)  # freecp_authors


def export_openai_weights(model_name: str, seed: int, path: str,
                          quick_gelu: bool = True) -> str:
    """Write the package's seeded random CLIP ``model_name`` as an
    OpenAI-format state dict (the key names of OpenAI's ``model.py``, which
    open_clip's non-custom-text CLIP shares), float32, to ``path``."""
    from mmseg_ovss.clip.loading import build_clip_model
    model = build_clip_model(model_name, random_init=True, seed=seed,
                             quick_gelu=quick_gelu)
    state = {k: v.detach().float().contiguous()
             for k, v in model.state_dict().items()}
    missing = [k for k in ('visual.proj', 'visual.conv1.weight',
                           'text_projection', 'token_embedding.weight')
               if k not in state]
    if missing:
        raise ValueError(f'{model_name}: not an OpenAI-layout CLIP (no '
                         f'{missing}); use a ViT-B/16 or ViT-L/14 model')
    torch.save(state, path)
    return path


DEFAULT_CONFIGS = dict(sclip='configs/baselines/sclip_ade.py',
                       freecp='configs/freecp/gem_ade.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--method', default='sclip',
                        choices=sorted(DEFAULT_CONFIGS),
                        help="whose code --repo holds: 'sclip' "
                        "(wangf3014/SCLIP) or 'freecp' (chenqi1126/FreeCP)")
    parser.add_argument('--repo', required=True,
                        help='local clone of the authors\' repository')
    parser.add_argument('--config', default=None,
                        help='our config (default: '
                        f'{DEFAULT_CONFIGS["sclip"]} for sclip, '
                        f'{DEFAULT_CONFIGS["freecp"]} for freecp)')
    parser.add_argument('--model-name', default='ViT-B-16')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--size', default='448x336', help='WxH of the '
                        'generated images')
    parser.add_argument('--images', nargs='+', default=None,
                        metavar='PATH', help='photos to run instead of '
                        'generated images, resized as the config\'s test '
                        'pipeline; the first is also the warm-up')
    parser.add_argument('--num-classes', type=int, default=150)
    parser.add_argument('--num-images', type=int, default=4)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--templates', default='single',
                        choices=('single', 'openai'),
                        help="'single' ('a photo of a {}.') for both, or "
                        "the 80 OpenAI templates (their code's own; slow "
                        'to encode on a CPU)')
    parser.add_argument('--rp', type=float, default=None,
                        help='freecp: T_rp for both (default: the config\'s)')
    parser.add_argument('--ap', type=float, default=None,
                        help='freecp: T_ap for both (default: the config\'s)')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--profile', type=int, default=0, metavar='K',
                        help='after the timed images, profile the first '
                        'one again on each side (untimed) and report its K '
                        'operators of most self CPU time')
    parser.add_argument('--json', default=None)
    args = parser.parse_args(argv)
    if args.profile < 0:
        parser.error(f'--profile {args.profile}: give a number of '
                     'operators >= 1 (or 0 for no profile)')
    if args.method != 'freecp' and (args.rp is not None or
                                    args.ap is not None):
        parser.error('--rp/--ap are FreeCP thresholds: use --method freecp')
    args.config = args.config or DEFAULT_CONFIGS[args.method]
    return args


class SCLIPAuthors:
    """The SCLIP authors' ``CLIPForSegmentation`` from their repository."""
    crops = None

    def __init__(self, repo, weights, names, crop, stride, templates,
                 workdir):
        repo = osp.abspath(repo)
        if not osp.isfile(osp.join(repo, 'clip_segmentor.py')):
            raise SystemExit(f'--repo {repo}: no clip_segmentor.py; give a '
                             'local clone of wangf3014/SCLIP')
        sys.path.insert(0, repo)
        module = importlib.import_module('clip_segmentor')
        if templates == 'single':
            module.openai_imagenet_template = [
                lambda c: f'a photo of a {c}.']
        name_file = osp.join(workdir, 'names.txt')
        Path(name_file).write_text('\n'.join(names) + '\n')
        self.model = module.CLIPForSegmentation(
            clip_path=weights, name_path=name_file, device='cpu',
            slide_crop=crop, slide_stride=stride).eval()

    def running(self):
        return contextlib.nullcontext()

    def image_meta(self, index, height, width):
        return {}


def build_ours(args, config):
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    import benchmark as bench
    bargs = bench.parse_args([config, '--random-init', '--model-name',
                              args.model_name, '--seed', str(args.seed),
                              '--device', 'cpu', '--templates',
                              args.templates, '--num-classes',
                              str(args.num_classes)])
    cfg, model = bench.build_model(bargs)
    # one name per class (the first synonym), the same for both codes
    names = [n.split(',')[0].strip() for n in bench.vocabulary(cfg, bargs)]
    if args.method == 'freecp':
        # the config's background rule; the authors' 'ade' branch has none
        background = cfg.model.get('text', {}).get('background_class',
                                                   'auto')
        model.set_vocabulary(names, background_class=background)
        if model.vocabulary().background_class is not None:
            raise SystemExit(
                f'{args.config}: the vocabulary has a background class; '
                "the authors' code is driven through its ADE branch, which "
                'has none. Use a vocabulary without background.')
    else:
        model.set_vocabulary(names, background_class=None)
    return bench, cfg, model.eval(), names


def build_theirs(args, cfg, weights, names, crop, stride, workdir):
    if args.method == 'sclip':
        return SCLIPAuthors(args.repo, weights, names, crop, stride,
                            args.templates, workdir)
    from freecp_authors import FreeCPAuthors, freecp_settings
    return FreeCPAuthors(args.repo, weights, names, args.model_name,
                         crop=crop, stride=stride, templates=args.templates,
                         workdir=workdir, **freecp_settings(cfg))


def windows(cfg):
    """(crop, stride) sides of our config's sliding windows."""
    test_cfg = cfg.model.get('test_cfg', {})
    crop = test_cfg.get('crop_size', (224, 224))
    stride = test_cfg.get('stride', (112, 112))
    crop = crop[0] if isinstance(crop, (tuple, list)) else crop
    stride = stride[0] if isinstance(stride, (tuple, list)) else stride
    return crop, stride


def load_images(bench, paths, cfg):
    """BGR uint8 (C, H, W) tensors of ``paths``, rescaled as the config's
    test pipeline ``Resize`` (keep_ratio) does."""
    pipeline = cfg.get('test_pipeline') or \
        cfg.test_dataloader.dataset.pipeline
    resize = [step for step in pipeline if step['type'] == 'Resize']
    if not resize or not resize[0].get('keep_ratio', False):
        raise SystemExit(f'{cfg.filename}: no keep-ratio Resize in its test '
                         'pipeline to size --images by')
    return [bench.read_image(path, keep_ratio_scale=resize[0]['scale'])
            for path in paths]


def predict(bench, model, image, meta):
    """Seconds of one ``benchmark.run_one`` and its (H, W) labels."""
    start = time.perf_counter()
    labels = bench.run_one(model, image, meta)
    return time.perf_counter() - start, labels


def image_meta(bench, theirs, index, image):
    meta = bench.image_metainfo(image)
    meta.update(theirs.image_meta(index, *image.shape[-2:]))
    return meta


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = args.config
        if args.method == 'freecp' and (args.rp is not None or
                                        args.ap is not None):
            from freecp_authors import threshold_config
            config = threshold_config(config, osp.join(tmp, 'config.py'),
                                      args.rp, args.ap)
        bench, cfg, ours, names = build_ours(args, config)
        crop, stride = windows(cfg)
        weights = export_openai_weights(args.model_name, args.seed,
                                        osp.join(tmp, 'clip.pt'))
        theirs = build_theirs(args, cfg, weights, names, crop, stride, tmp)
        if args.images:
            images = load_images(bench, args.images, cfg)
            warmup, timed = images[:1], images
        else:
            width, height = (int(v) for v in args.size.lower().split('x'))
            images = bench.make_images(args.warmup + args.num_images,
                                       height, width)
            warmup, timed = images[:args.warmup], images[args.warmup:]
        metas = [image_meta(bench, theirs, i, image)
                 for i, image in enumerate(warmup + timed)]
        result = run_side_by_side(args, bench, ours, theirs, warmup, timed,
                                  metas)
    shape = [list(image.shape[-2:]) for image in timed]
    result = dict(
        method=args.method, config=args.config,
        authors_repo=osp.abspath(args.repo),
        image_sizes=shape, windows=[crop, stride], num_classes=len(names),
        templates=args.templates, threads=torch.get_num_threads(),
        **({} if args.method != 'freecp' else dict(
            rp_threshold=theirs.model.rp_thres,
            ap_threshold=theirs.model.ap_thres)),
        **result)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def run_side_by_side(args, bench, ours, theirs, warmup, timed, metas):
    """One untimed warm-up image per model, then the timed images in
    alternating order; times, ratios, label agreement (and crops)."""
    freecp = args.method == 'freecp'
    if freecp:
        from freecp_authors import counting_our_crops
    our_crops = dict(boxes=0, classified=0)
    counting = (lambda: counting_our_crops(our_crops)) if freecp else \
        contextlib.nullcontext

    def run(who, image, meta):
        if who == 'ours':
            with counting():
                return predict(bench, ours, image, meta)
        with theirs.running():
            return predict(bench, theirs.model, image, meta)

    for index, image in enumerate(warmup):
        run('ours', image, metas[index])
        run('theirs', image, metas[index])
    times = dict(ours=[], theirs=[])
    crops = dict(ours=[], ours_boxes=[], theirs=[])
    labels_of = dict(ours=[], theirs=[])
    labels_used = dict(ours=[], theirs=[])
    for index, image in enumerate(timed):
        meta = metas[len(warmup) + index]
        order = ('ours', 'theirs') if index % 2 == 0 else ('theirs', 'ours')
        labels = {}
        our_crops.update(boxes=0, classified=0)
        if freecp:
            theirs.take_crops()
        for who in order:
            seconds, labels[who] = run(who, image, meta)
            times[who].append(seconds)
        for who in labels_of:
            labels_of[who].append(labels[who])
        for who in labels_used:
            labels_used[who].append(int(labels[who].unique().numel()))
        if freecp:
            crops['ours'].append(our_crops['classified'])
            crops['ours_boxes'].append(our_crops['boxes'])
            crops['theirs'].append(theirs.take_crops()['classified'])
    result = dict(
        seconds=times,
        ratio_of_means=statistics.mean(times['ours']) /
        statistics.mean(times['theirs']),
        ratio_of_medians=statistics.median(times['ours']) /
        statistics.median(times['theirs']),
        ratio_of_minima=min(times['ours']) / min(times['theirs']),
        label_agreement=bench.label_agreement(
            labels_of['ours'], labels_of['theirs'])['per_image'],
        labels_used=labels_used)
    if freecp:
        result['crops_classified'] = crops
    top = getattr(args, 'profile', 0)
    if top:
        meta = metas[len(warmup)]
        result['profile'] = {
            who: top_operators(lambda: run(who, timed[0], meta), top)
            for who in ('ours', 'theirs')}
    return result


def top_operators(step, top: int) -> dict:
    """Self CPU seconds of one ``step()`` under ``torch.profiler``: the
    total and the ``top`` operators of most self time (name, seconds,
    calls), most first."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total,
                    reverse=True)
    return dict(
        self_s_total=sum(e.self_cpu_time_total for e in events) / 1e6,
        operators=[dict(name=e.key, self_s=e.self_cpu_time_total / 1e6,
                        calls=e.count) for e in events[:top]])


if __name__ == '__main__':
    main()
