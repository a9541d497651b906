"""The package outside its checkout: sdist, wheel, editable links, OpenCV.

A wheel (``pip install .``) has no repository root next to it: the class
names, descriptions, splits, samples, configs and tools must travel inside it
(``mmseg_ovss/.mim/``). The wheel is built offline from the sdist, so the
test covers ``MANIFEST.in`` too, and installed into a private target that is
the only place ``mmseg_ovss`` can be imported from.
"""
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]
# what a checkout needs to build the package (datasets under data/ excluded)
SOURCE_ITEMS = ('setup.py', 'MANIFEST.in', 'README.md', 'requirements',
                'mmseg_ovss', 'configs', 'tools', 'data/class_names',
                'data/descriptions', 'data/splits', 'data/samples')
OPENCV_DISTRIBUTIONS = ('opencv-python', 'opencv-python-headless',
                        'opencv-contrib-python',
                        'opencv-contrib-python-headless')

# Run by the installed package from a directory that has no data/.
PROBE = r'''
import json
from mmengine.config import Config
import mmseg_ovss
from mmseg_ovss.utils.errors import OVSSDataError
from mmseg_ovss.utils.paths import find_resource, resolve_data_path
out = dict(package=mmseg_ovss.__file__)
for key, rel in [('class_names', 'data/class_names/voc21.txt'),
                 ('descriptions', 'data/descriptions/voc21.json'),
                 ('split', 'data/splits/voc_15_5.json'),
                 ('vocabularies', 'data/samples/vocabularies.json')]:
    out[key] = str(resolve_data_path(rel))
out['tool'] = str(find_resource('tools/test.py'))
cfg = Config.fromfile(str(resolve_data_path('configs/freecp/sclip_voc21.py')))
out['config'] = cfg.filename
out['model'] = cfg.model.to_dict()
out['config_class_names'] = str(resolve_data_path(cfg.model.text.class_names))
try:
    resolve_data_path('data/class_names/missing.txt')
except OVSSDataError as error:
    out['missing'] = str(error)
print('PROBE' + json.dumps(out))
'''


def _copy_sources(dst: Path):
    """The files of a checkout, plus a fake linked dataset that must stay out."""
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '.mim',
                                    '*.egg-info')
    dst.mkdir(parents=True)
    for item in SOURCE_ITEMS:
        src = REPO_ROOT / item
        if src.is_dir():
            shutil.copytree(src, dst / item, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dst / item)
    fake = dst / 'data' / 'VOCdevkit' / 'VOC2012'
    fake.mkdir(parents=True)
    (fake / 'dataset_image.jpg').write_bytes(b'not shipped')


def _run(args, cwd, env=None, timeout=240):
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f'{args} failed ({result.returncode}):\n{result.stdout}\n'
        f'{result.stderr}')
    return result


def _offline_env():
    env = dict(os.environ, PIP_NO_INDEX='1', PIP_DISABLE_PIP_VERSION_CHECK='1',
               PIP_NO_INPUT='1', PYTHONDONTWRITEBYTECODE='1')
    env.pop('PYTHONPATH', None)
    return env


def test_wheel_from_sdist_finds_data_and_configs(tmp_path):
    src = tmp_path / 'src'
    _copy_sources(src)
    env = _offline_env()
    _run([sys.executable, 'setup.py', '-q', 'sdist', '-d', tmp_path / 'dist'],
         cwd=src, env=env)
    sdist, = (tmp_path / 'dist').glob('mmseg-ovss-*.tar.gz')
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        if hasattr(tarfile, 'data_filter'):  # Python >= 3.11.4
            tar.extractall(tmp_path / 'unpacked', filter='data')
        else:
            tar.extractall(tmp_path / 'unpacked')
    assert not [n for n in names if 'VOCdevkit' in n]
    unpacked, = (tmp_path / 'unpacked').iterdir()
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
          '--no-build-isolation', '--no-index', '-w', tmp_path / 'wheels',
          unpacked], cwd=tmp_path, env=env)
    wheel, = (tmp_path / 'wheels').glob('mmseg_ovss-*.whl')
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist()
                    if 'VOCdevkit' in n or n.endswith('.pyc')]
    site = tmp_path / 'site'
    _run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index',
          '--target', site, wheel], cwd=tmp_path, env=env)

    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    env['PYTHONPATH'] = str(site)  # the venv's other packages stay importable
    probe = _run([sys.executable, '-c', PROBE], cwd=elsewhere, env=env)
    out = json.loads(probe.stdout.split('PROBE', 1)[1])

    mim = site / 'mmseg_ovss' / '.mim'
    assert Path(out['package']).parent == site / 'mmseg_ovss'
    for key, rel in [('class_names', 'data/class_names/voc21.txt'),
                     ('descriptions', 'data/descriptions/voc21.json'),
                     ('split', 'data/splits/voc_15_5.json'),
                     ('vocabularies', 'data/samples/vocabularies.json')]:
        assert Path(out[key]) == mim / rel
        assert Path(out[key]).read_bytes() == (REPO_ROOT / rel).read_bytes()
    assert Path(out['tool']) == mim / 'tools' / 'test.py'
    assert Path(out['config']) == mim / 'configs/freecp/sclip_voc21.py'
    assert Path(out['config_class_names']) == mim / 'data/class_names/voc21.txt'
    # the installed config, _base_ files included, equals the checkout's
    from mmengine.config import Config
    here = Config.fromfile(REPO_ROOT / 'configs/freecp/sclip_voc21.py')
    assert out['model'] == json.loads(json.dumps(here.model.to_dict()))
    assert 'missing.txt' in out['missing'] and str(mim) in out['missing']


@pytest.mark.parametrize('command', ['develop', 'editable_wheel'])
def test_editable_install_links_shipped_files(tmp_path, command):
    """``pip install -e .`` (legacy ``develop`` or PEP 660) links .mim."""
    src = tmp_path / 'src'
    _copy_sources(src)
    # '--help' stops after setup.py's own work: the links, no install
    _run([sys.executable, 'setup.py', command, '--help'], cwd=src,
         env=_offline_env())
    mim = src / 'mmseg_ovss' / '.mim'
    for item in ('configs', 'tools', 'data/class_names', 'data/descriptions',
                 'data/splits', 'data/samples'):
        assert (mim / item).is_symlink(), item
        assert (mim / item).resolve() == (src / item).resolve()
    assert not (mim / 'data' / 'VOCdevkit').exists()


def test_checkout_data_found_first(tmp_path, monkeypatch):
    from mmseg_ovss.utils import paths
    monkeypatch.chdir(tmp_path)  # not the checkout: found through REPO_ROOT
    assert paths.REPO_ROOT == REPO_ROOT
    assert paths.resource_roots()[0] == REPO_ROOT
    assert (paths.resolve_data_path('data/splits/voc_15_5.json')
            == REPO_ROOT / 'data/splits/voc_15_5.json')


def test_exactly_one_opencv_distribution():
    """Two OpenCV wheels overwrite each other's ``cv2`` package."""
    found = sorted({
        (dist.metadata['Name'].lower().replace('_', '-'), dist.version)
        for dist in importlib.metadata.distributions()
        if dist.metadata['Name'] and dist.metadata['Name'].lower().replace(
            '_', '-') in OPENCV_DISTRIBUTIONS})
    assert len(found) == 1, (
        f'expected exactly one OpenCV distribution, found {found or "none"}; '
        'keep only the headless one: pip uninstall -y opencv-python '
        'opencv-contrib-python opencv-contrib-python-headless && pip install '
        "--force-reinstall --no-deps 'opencv-python-headless>=4.10' "
        '(make env does this after the dependency installs)')
    assert found[0][0] == 'opencv-python-headless', (
        f'{found[0][0]} is installed; requirements/runtime.txt asks for '
        'opencv-python-headless')
