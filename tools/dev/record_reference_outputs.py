"""Record the reference outputs of the training-free configs.

    PYTHONPATH=. python tools/dev/record_reference_outputs.py
    PYTHONPATH=. python tools/dev/record_reference_outputs.py \
        --configs 'baselines/sclip_*' --out-dir /tmp/reference

Writes ``outputs.npz`` (arrays ``<config>/<name>`` of
:func:`mmseg_ovss.testing.reference_outputs.compact`, config =
``baselines/sclip_voc21``; ``__meta__/commit``, ``__meta__/pixels``,
``__meta__/ori_shapes``) and ``manifest.json`` (the commit, versions, the
settings of the recording, each config's class count and time, and the
configs left out with the reason) for every config under
``configs/baselines/`` and ``configs/freecp/`` (subfolders included).
Record with the code the outputs are to be pinned to, before a refactor;
``tests/test_reference_outputs.py`` recomputes them after it.
"""
import argparse
import fnmatch
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from mmseg_ovss.testing import reference_outputs as ref  # noqa: E402

#: Where the configs to pin live (subfolders included).
CONFIG_GROUPS = ('baselines', 'freecp')
DEFAULT_OUT = REPO / 'tests' / 'data' / 'reference_outputs'


def pinned_configs(configs_root: Path = REPO / 'configs'):
    """``(config id, path)`` of every config under :data:`CONFIG_GROUPS`,
    sorted."""
    found = []
    for group in CONFIG_GROUPS:
        for path in sorted((configs_root / group).rglob('*.py')):
            found.append((ref.config_id(path, configs_root), path))
    return found


def _git(*args) -> str:
    try:
        return subprocess.run(['git', *args], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ''


def _versions() -> dict:
    import mmengine
    import mmseg
    import open_clip
    import timm
    import torch
    return dict(torch=torch.__version__, open_clip=open_clip.__version__,
                timm=timm.__version__, numpy=np.__version__,
                mmengine=mmengine.__version__, mmseg=mmseg.__version__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out-dir', default=str(DEFAULT_OUT),
                        help=f'output folder (default {DEFAULT_OUT})')
    parser.add_argument('--configs', nargs='+', default=['*'],
                        help="config ids to record (fnmatch patterns, e.g. "
                        "'freecp/*_ade'; default: all)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    configs = [(cid, path) for cid, path in pinned_configs()
               if any(fnmatch.fnmatch(cid, p) for p in args.configs)]
    if not configs:
        raise SystemExit(f'no config matches {args.configs}')
    commit = _git('rev-parse', 'HEAD')
    arrays = {'__meta__/commit': np.array(commit),
              '__meta__/pixels': ref.sample_pixels(),
              '__meta__/ori_shapes': np.array(
                  [ori for _, ori in ref.IMAGE_SHAPES])}
    recorded, excluded = {}, {}
    for cid, path in configs:
        reason = ref.unpinned_reason(ref.load_reference_config(path))
        if reason:
            excluded[cid] = reason
            print(f'{cid}: not recorded ({reason})', flush=True)
            continue
        start = time.perf_counter()
        outputs = ref.reference_outputs(path)
        seconds = time.perf_counter() - start
        assert np.array_equal(outputs['pixels'], arrays['__meta__/pixels'])
        for name, value in ref.compact(outputs).items():
            arrays[f'{cid}/{name}'] = value
        recorded[cid] = dict(num_classes=int(outputs['scores'].shape[-1]),
                             seconds=round(seconds, 2))
        print(f'{cid}: {recorded[cid]["num_classes"]} classes, '
              f'{seconds:.1f} s', flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / 'outputs.npz', **arrays)
    manifest = dict(
        commit=commit, commit_subject=_git('log', '-1', '--format=%s'),
        uncommitted_changes=_git('status', '--porcelain', '--', 'mmseg_ovss',
                                 'configs', 'data').splitlines(),
        versions=_versions(),
        settings=dict(tiny_clip=ref.TINY_CLIP_OPTIONS,
                      image_shapes=ref.IMAGE_SHAPES,
                      image_seed=ref.IMAGE_SEED, pixel_seed=ref.PIXEL_SEED,
                      num_pixels=ref.NUM_PIXELS,
                      num_full_pixels=ref.NUM_FULL_PIXELS),
        configs=recorded, excluded=excluded)
    (out / 'manifest.json').write_text(json.dumps(manifest, indent=1) + '\n')
    size = (out / 'outputs.npz').stat().st_size
    print(f'wrote {out / "outputs.npz"} ({size / 1e6:.2f} MB, '
          f'{len(recorded)} configs, {len(excluded)} left out) and '
          f'manifest.json; commit {commit}')


if __name__ == '__main__':
    main()
