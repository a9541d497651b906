"""Install mmseg-ovss: ``pip install .`` (a wheel) or ``pip install -e .``.

The class names, descriptions, splits, sample images, configs and tools live
at the repository root; a wheel carries them under ``mmseg_ovss/.mim/``
(MMSegmentation's convention, see its ``setup.py``: ``add_mim_extension``).
``mmseg_ovss.utils.paths`` looks in the repository root first, then there.
"""
import os
import os.path as osp
import platform
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

# What a wheel ships under mmseg_ovss/.mim/ (paths relative to the
# repository root). Only these data folders: datasets linked or unpacked
# under data/ (data/VOCdevkit, data/ade, ...) stay out.
MIM_ITEMS = (
    'configs',
    'tools',
    'data/class_names',
    'data/descriptions',
    'data/splits',
    'data/samples',
)
MIM_IGNORE = shutil.ignore_patterns('__pycache__', '*.pyc', '*.pyo')


def read_requirements(name):
    lines = HERE.joinpath('requirements', name).read_text().splitlines()
    return [ln.split('#')[0].strip() for ln in lines if ln.split('#')[0].strip()]


def read_version():
    scope = {}
    exec(HERE.joinpath('mmseg_ovss', 'version.py').read_text(), scope)
    return scope['__version__']


def mim_mode(argv):
    """'symlink' for editable installs, 'copy' for builds, None otherwise."""
    if 'develop' in argv or 'editable_wheel' in argv:
        # pip install -e . (legacy ``develop`` or PEP 660 ``editable_wheel``)
        return 'copy' if platform.system() == 'Windows' else 'symlink'
    if {'sdist', 'bdist_wheel', 'build', 'build_py', 'install'} & set(argv):
        return 'copy'
    return None


def add_mim_extension(mode):
    """Link (editable) or copy (wheel, sdist) the data files into ``.mim``."""
    if mode is None:
        return
    mim = HERE / 'mmseg_ovss' / '.mim'
    for item in MIM_ITEMS:
        src = HERE / item
        if not src.exists():
            continue  # building from an sdist that already holds .mim
        dst = mim / item
        if dst.is_symlink() or dst.is_file():
            dst.unlink()
        elif dst.is_dir():
            shutil.rmtree(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, dst.parent), dst)
        else:
            shutil.copytree(src, dst, ignore=MIM_IGNORE)


add_mim_extension(mim_mode(sys.argv))

setup(
    name='mmseg-ovss',
    version=read_version(),
    description='Open-vocabulary semantic segmentation methods for MMSegmentation 1.x',
    long_description=HERE.joinpath('README.md').read_text(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['mmseg_ovss', 'mmseg_ovss.*']),
    # the files under mmseg_ovss/.mim/ and the tiny test models' JSON
    # configs are package data, listed in MANIFEST.in
    include_package_data=True,
    install_requires=['mmcv>=2.0.0rc4,<2.2.0'] + read_requirements('runtime.txt'),
    extras_require={
        'crf': ['pydensecrf2==1.1'],
        'tests': read_requirements('tests.txt'),
    },
    zip_safe=False,
)
