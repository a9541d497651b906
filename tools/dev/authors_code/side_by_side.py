"""Time the package's SCLIP against the SCLIP authors' code, side by side.

    python tools/dev/authors_code/side_by_side.py --repo /path/to/SCLIP \
        --config configs/baselines/sclip_ade.py --size 448x336 \
        --num-classes 150 --num-images 4 --threads 2

``--repo`` is a LOCAL clone of wangf3014/SCLIP (this tool never downloads
it). Both models get the same random ViT-B/16 weights: the package's seeded
random CLIP (``--seed``) is written as an OpenAI-format state dict, which
the authors' ``clip.load(path)`` builds its model from. Both run the same
generated images, the same vocabulary (one name per class, written to a
name file for their ``get_cls_idx``) and the same windows (their
``slide_crop`` / ``slide_stride`` are taken from our config's
``test_cfg``), alternating per image (ours, theirs; theirs, ours; ...). It
prints the time ratio (ours / theirs) and the fraction of pixels with the
same label. A developer tool: not part of the test suite.
"""
import argparse
import importlib
import json
import os.path as osp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '..', '..', '..')
sys.path.insert(0, ROOT)


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repo', required=True,
                        help='local clone of wangf3014/SCLIP')
    parser.add_argument('--config', default='configs/baselines/sclip_ade.py')
    parser.add_argument('--model-name', default='ViT-B-16')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--size', default='448x336', help='WxH of the images')
    parser.add_argument('--num-classes', type=int, default=150)
    parser.add_argument('--num-images', type=int, default=4)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--templates', default='single',
                        choices=('single', 'openai'),
                        help="'single' ('a photo of a {}.') for both, or "
                        "the 80 OpenAI templates (their code's own; slow "
                        'to encode on a CPU)')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--json', default=None)
    return parser.parse_args(argv)


def build_theirs(args, weights, names, crop, stride):
    """The authors' ``CLIPForSegmentation`` from their repository."""
    repo = osp.abspath(args.repo)
    if not osp.isfile(osp.join(repo, 'clip_segmentor.py')):
        raise SystemExit(f'--repo {repo}: no clip_segmentor.py; give a '
                         'local clone of wangf3014/SCLIP')
    sys.path.insert(0, repo)
    module = importlib.import_module('clip_segmentor')
    if args.templates == 'single':
        module.openai_imagenet_template = [lambda c: f'a photo of a {c}.']
    name_file = osp.join(osp.dirname(weights), 'names.txt')
    Path(name_file).write_text('\n'.join(names) + '\n')
    return module.CLIPForSegmentation(
        clip_path=weights, name_path=name_file, device='cpu',
        slide_crop=crop, slide_stride=stride).eval()


def build_ours(args):
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    import benchmark as bench
    bargs = bench.parse_args([args.config, '--random-init', '--model-name',
                              args.model_name, '--seed', str(args.seed),
                              '--device', 'cpu', '--templates',
                              args.templates, '--num-classes',
                              str(args.num_classes)])
    cfg, model = bench.build_model(bargs)
    # one name per class (the first synonym), the same for both codes
    names = [n.split(',')[0].strip() for n in bench.vocabulary(cfg, bargs)]
    model.set_vocabulary(names, background_class=None)
    return bench, cfg, model.eval(), names


def predict(model, image, meta):
    from mmseg.structures import SegDataSample
    data = model.data_preprocessor(
        dict(inputs=[image], data_samples=[SegDataSample(metainfo=meta)]),
        False)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.predict(data['inputs'], data['data_samples'])
    return time.perf_counter() - start, out[0].pred_sem_seg.data


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split('x'))
    bench, cfg, ours, names = build_ours(args)
    test_cfg = cfg.model.get('test_cfg', {})
    crop = test_cfg.get('crop_size', (224, 224))
    stride = test_cfg.get('stride', (112, 112))
    crop = crop[0] if isinstance(crop, (tuple, list)) else crop
    stride = stride[0] if isinstance(stride, (tuple, list)) else stride
    with tempfile.TemporaryDirectory() as tmp:
        weights = export_openai_weights(args.model_name, args.seed,
                                        osp.join(tmp, 'clip.pt'))
        theirs = build_theirs(args, weights, names, crop, stride)
    meta = dict(ori_shape=(height, width), img_shape=(height, width),
                pad_shape=(height, width), padding_size=[0, 0, 0, 0])
    images = bench.make_images(args.warmup + args.num_images, height, width)
    for image in images[:args.warmup]:
        predict(ours, image, meta)
        predict(theirs, image, meta)
    times = dict(ours=[], theirs=[])
    agree = []
    for index, image in enumerate(images[args.warmup:]):
        order = ('ours', 'theirs') if index % 2 == 0 else ('theirs', 'ours')
        labels = {}
        for who in order:
            seconds, labels[who] = predict(
                ours if who == 'ours' else theirs, image, meta)
            times[who].append(seconds)
        agree.append(float((labels['ours'] == labels['theirs'])
                           .float().mean()))
    result = dict(
        config=args.config, authors_repo=osp.abspath(args.repo),
        image_size=[height, width], windows=[crop, stride],
        num_classes=len(names), templates=args.templates,
        threads=torch.get_num_threads(), seconds=times,
        ratio_of_means=statistics.mean(times['ours']) /
        statistics.mean(times['theirs']),
        ratio_of_medians=statistics.median(times['ours']) /
        statistics.median(times['theirs']),
        ratio_of_minima=min(times['ours']) / min(times['theirs']),
        label_agreement=agree)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == '__main__':
    main()
