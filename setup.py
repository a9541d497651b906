"""Install mmseg-ovss (``pip install -e .`` inside the environment of the README)."""
from pathlib import Path

from setuptools import find_packages, setup


def read_requirements(name):
    lines = Path(__file__).parent.joinpath('requirements', name).read_text().splitlines()
    return [ln.split('#')[0].strip() for ln in lines if ln.split('#')[0].strip()]


def read_version():
    scope = {}
    exec(Path(__file__).parent.joinpath('mmseg_ovss', 'version.py').read_text(), scope)
    return scope['__version__']


setup(
    name='mmseg-ovss',
    version=read_version(),
    description='Open-vocabulary semantic segmentation methods for MMSegmentation 1.x',
    long_description=Path(__file__).parent.joinpath('README.md').read_text(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['mmseg_ovss', 'mmseg_ovss.*']),
    include_package_data=True,
    install_requires=['mmcv>=2.0.0rc4,<2.2.0'] + read_requirements('runtime.txt'),
    extras_require={
        'crf': ['pydensecrf2==1.1'],
        'tests': read_requirements('tests.txt'),
    },
    zip_safe=False,
)
