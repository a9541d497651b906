"""Annotation-free hyper-parameter search of PnP-OVSS (paper §3.4, Table 2).

The VLM is the config's: BLIP (Table 2: layers 1-12, heads 1-12) or
BridgeTower (layers 1-6, heads 1-16), the grid defaulting to all of its
layers and heads. Random search scored by the CLIP reward (``mmseg_ovss.blip.reward``): only
the class names present in each image are used (read from the label map as
a set of class ids), never the masks. Two stages, as in the paper:

    # 1) layer, head and threshold on GradCAM masks (one pass, no blur/CRF)
    python tools/pnp_search.py configs/pnp_ovss/blip_pc59.py --stage gradcam \
        --trials 100 --max-images 200 --work-dir work_dirs/pnp_search_pc59
    # 2) the blur sigma on the masks before DenseCRF, the rest fixed
    python tools/pnp_search.py configs/pnp_ovss/blip_pc59.py --stage blur \
        --cfg-options model.cross_attention_layer=8 ...

Each class named in an image gets its own mask (classes may overlap, no
argmax): its salience map thresholded at T (binary), resized to the image;
``gradcam`` stage: that mask; ``blur``/``joint``: the mask blurred with sigma
and thresholded at T again, as the authors did. The search tunes on the first
``--max-images`` images of the config's test split. The model is built
without DenseCRF (the reward never uses it).

Every trial is appended to ``<work-dir>/search_<stage>.jsonl``; ``--resume``
continues an interrupted search (same seed, same trial order). The best
setting is printed as a config snippet.
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.utils import ProgressBar

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))
from mmseg_ovss.blip.postprocess import (gaussian_blur,  # noqa: E402
                                         resize_maps, threshold_maps)
from mmseg_ovss.blip.reward import DEFAULT_REWARD_TEMPLATE  # noqa: E402
from mmseg_ovss.utils.errors import OVSSConfigError  # noqa: E402

STAGES = ('gradcam', 'blur', 'joint')
TINY_REWARD_MODEL = 'ovss-tiny-ViT-8'  # random weights, tests only


def parse_range(text: str):
    """``start:end:step`` (inclusive end) -> list of values."""
    try:
        start, end, step = (float(v) for v in text.split(':'))
    except ValueError:
        raise OVSSConfigError(
            f'range "{text}" must be start:end:step, e.g. 0.05:0.45:0.1')
    count = int(np.floor((end - start) / step + 1e-6)) + 1
    return [round(start + i * step, 6) for i in range(count)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='PnP-OVSS random search with the CLIP reward')
    parser.add_argument('config', help='a configs/pnp_ovss/*.py file')
    parser.add_argument('--work-dir', required=True,
                        help='where the search log is written')
    parser.add_argument('--stage', choices=STAGES, default='gradcam',
                        help='gradcam: layer/head/threshold on GradCAM '
                        'masks; blur: sigma on the masks before CRF; joint: '
                        'all four on the masks before CRF')
    parser.add_argument('--trials', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--resume', action='store_true',
                        help='continue the log in --work-dir')
    parser.add_argument('--max-images', type=int, default=None,
                        help='use the first N images of the test split')
    parser.add_argument('--layers', default=None,
                        help='1-based layers start:end:step (default: all)')
    parser.add_argument('--heads', default=None,
                        help='1-based heads start:end:step (default: all)')
    parser.add_argument('--thresholds', default='0.05:0.45:0.1')
    parser.add_argument('--sigmas', default='0.01:0.11:0.02')
    parser.add_argument('--reward-model', default='ViT-L-14-336',
                        help='open_clip model name; "tiny" = a tiny random '
                        'model (tests only)')
    parser.add_argument('--reward-pretrained', default='openai',
                        help='open_clip tag, or a local copy of the OpenAI '
                        'weights (e.g. ViT-L-14-336px.pt; QuickGELU as '
                        'trained); "none" = random weights. Built by the '
                        "package's CLIP loader")
    parser.add_argument('--reward-template', default=DEFAULT_REWARD_TEMPLATE,
                        help='CLIP prompt of a class name, "{}" = the name '
                        '(default: the bare name, as the authors; e.g. '
                        '"a photo of a {}.")')
    parser.add_argument('--device', default=None)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def search_space(args, model):
    """Table 2's grid: every cross-attention layer and head of the model
    (BLIP: layers 1-12, heads 1-12; BridgeTower large: layers 1-6, heads
    1-16) unless narrowed, threshold and sigma ranges."""
    adapter = model.cross_attention
    layers = ([int(v) for v in parse_range(args.layers)] if args.layers
              else list(range(1, adapter.num_layers + 1)))
    heads = ([int(v) for v in parse_range(args.heads)] if args.heads
             else list(range(1, adapter.num_heads + 1)))
    for what, values, count in (('--layers', layers, adapter.num_layers),
                                ('--heads', heads, adapter.num_heads)):
        bad = [v for v in values if not 1 <= v <= count]
        if bad:
            raise OVSSConfigError(
                f'{what} {bad} out of range: the {adapter.vlm_name} has '
                f'1..{count}.')
    space = dict(cross_attention_layer=layers, cross_attention_head=heads,
                 threshold=parse_range(args.thresholds),
                 blur_sigma=parse_range(args.sigmas))
    if args.stage == 'gradcam':
        space.pop('blur_sigma')
    elif args.stage == 'blur':
        space = dict(blur_sigma=space['blur_sigma'])
    return space


def sample_trials(space: dict, trials: int, seed: int):
    """``trials`` distinct grid points (all of them if the grid is smaller),
    in a seeded random order."""
    keys = sorted(space)
    sizes = [len(space[k]) for k in keys]
    total = int(np.prod(sizes))
    rng = np.random.default_rng(seed)
    flat = rng.permutation(total)[:trials]
    out = []
    for index in flat:
        params = {}
        for key, size in zip(reversed(keys), reversed(sizes)):
            index, pos = divmod(int(index), size)
            params[key] = space[key][pos]
        out.append({k: params[k] for k in keys})
    return out


def apply_params(model, params: dict, stage: str):
    if 'cross_attention_layer' in params:
        model.cross_attention.layer = params['cross_attention_layer'] - 1
    if 'cross_attention_head' in params:
        model.cross_attention.head = params['cross_attention_head'] - 1
    if 'threshold' in params:
        model.threshold = params['threshold']
    model.crf = None  # the reward scores the masks before DenseCRF
    if stage == 'gradcam':
        model.blur_sigma = None
        model.salience_dropout = dict(model.salience_dropout, iterations=1)
    elif 'blur_sigma' in params:
        model.blur_sigma = params['blur_sigma']


def load_images(cfg, model, max_images, device):
    """Pre-processed images with their ground-truth class ids (names only)."""
    loader_cfg = dict(cfg.test_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False, batch_size=1)
    loader = Runner.build_dataloader(loader_cfg)
    items = []
    for batch in loader:
        data = model.data_preprocessor(batch, False)
        image, sample = data['inputs'][0], data['data_samples'][0]
        labels = sample.gt_sem_seg.data.unique().tolist()
        class_ids = [int(v) for v in labels
                     if 0 <= v < len(model.vocabulary)
                     and v != model.background_index
                     and v != model.ignore_index]
        img_h, img_w = sample.metainfo['img_shape'][:2]
        ori_shape = tuple(sample.metainfo['ori_shape'][:2])
        image = image[:, :img_h, :img_w].to(device)
        items.append(dict(image=image, class_ids=class_ids,
                          ori_shape=ori_shape,
                          rgb=model.image_rgb(image, ori_shape)))
        if max_images and len(items) >= max_images:
            break
    return items


def class_masks(model, image, class_ids, ori_shape, stage: str
                ) -> np.ndarray:
    """(K, H, W) bool: one mask per class of ``class_ids``, each thresholded
    on its own (masks may overlap; no argmax, no background, no CRF)."""
    if model.threshold is None:
        raise OVSSConfigError(
            'the search reward needs a threshold: set model.threshold or '
            'search it (--stage gradcam / joint).')
    pixels = model.to_patch_grid(image[None])
    salience = model.class_salience(pixels, class_ids)[0]
    return masks_from_salience(salience, ori_shape, model.threshold,
                               model.blur_sigma, stage)


def masks_from_salience(salience, ori_shape, threshold: float,
                        blur_sigma=None, stage: str = 'gradcam'
                        ) -> np.ndarray:
    """(K, h, w) summed salience -> (K, H, W) bool masks at ``ori_shape``.

    Binary threshold at T of each class's min-max map, bilinear resize;
    ``gradcam`` stage (or no blur): the resized map >= 0.5; else blurred
    with sigma (then min-max) and thresholded at T again (authors).
    """
    on = threshold_maps(salience.detach().float(), threshold, 'binary')
    maps = resize_maps(on, ori_shape).cpu()
    if stage == 'gradcam' or blur_sigma is None:
        return (maps >= 0.5).numpy()
    blurred = gaussian_blur(maps.numpy(), blur_sigma)
    return blurred > threshold


def trial_reward(model, reward, items, stage: str = 'gradcam') -> int:
    total = 0
    for item in items:
        ids = item['class_ids']
        if not ids:
            continue
        masks = class_masks(model, item['image'], ids, item['ori_shape'],
                            stage)
        names = [model.vocabulary[c][0] for c in ids]
        total += reward(item['rgb'], masks, names)
    return total


def read_log(path, header):
    done = {}
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines or lines[0].get('header') != header:
        raise OVSSConfigError(
            f'{path} was written by a different search (config, stage, seed '
            f'or space differ); use another --work-dir or drop --resume.')
    for line in lines[1:]:
        done[line['trial']] = line
    return done


def best_snippet(best: dict, stage: str) -> str:
    args = ', '.join(f'{k}={v}' for k, v in best['params'].items())
    return (f'# PnP-OVSS search ({stage}): reward {best["reward"]} over '
            f'{best["images"]} images, trial {best["trial"]}\n'
            f'model = dict({args})')


def main(argv=None):
    """Run the search; returns ``dict(best=..., trials=[...])``."""
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    import mmseg_ovss  # noqa: F401  (registers the models)
    from mmseg.registry import MODELS

    from mmseg_ovss.blip.reward import ClipReward
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    torch.manual_seed(args.seed)
    # the reward scores the masks before DenseCRF: no pydensecrf needed
    cfg.model.crf = None
    model = MODELS.build(cfg.model).to(device).eval()
    reward_name, reward_weights = args.reward_model, args.reward_pretrained
    if reward_name == 'tiny':
        from mmseg_ovss.testing.tiny_clip import register_tiny_clip_models
        register_tiny_clip_models()
        reward_name = TINY_REWARD_MODEL
    if str(reward_weights).lower() == 'none':
        reward_weights = None
    reward = ClipReward(reward_name, reward_weights, device=device,
                        template=args.reward_template)

    space = search_space(args, model)
    trials = sample_trials(space, args.trials, args.seed)
    os.makedirs(args.work_dir, exist_ok=True)
    log_path = osp.join(args.work_dir, f'search_{args.stage}.jsonl')
    header = dict(config=osp.abspath(args.config), stage=args.stage,
                  seed=args.seed, space=space,
                  max_images=args.max_images,
                  reward_template=args.reward_template,
                  cfg_options=dict(args.cfg_options or {}))
    header = json.loads(json.dumps(header))
    done = {}
    if args.resume and osp.isfile(log_path):
        done = read_log(log_path, header)
    else:
        with open(log_path, 'w') as f:
            f.write(json.dumps(dict(header=header)) + '\n')
    items = load_images(cfg, model, args.max_images, device)
    print(f'PnP-OVSS search: stage {args.stage}, {len(trials)} trials '
          f'({len(done)} already done), {len(items)} images')
    progress = ProgressBar(len(trials))
    results = []
    for index, params in enumerate(trials):
        if index in done:
            results.append(done[index])
            progress.update()
            continue
        start = time.perf_counter()
        apply_params(model, params, args.stage)
        result = dict(trial=index, params=params,
                      reward=trial_reward(model, reward, items, args.stage),
                      images=len(items),
                      seconds=round(time.perf_counter() - start, 3))
        with open(log_path, 'a') as f:
            f.write(json.dumps(result) + '\n')
        results.append(result)
        progress.update()
    print()
    best = max(results, key=lambda r: (r['reward'], -r['trial']))
    print(best_snippet(best, args.stage))
    return dict(best=best, trials=results, log=log_path)


if __name__ == '__main__':
    main()
