"""mmseg-ovss: open-vocabulary semantic segmentation for MMSegmentation 1.x.

Importing the package registers its datasets, metrics, transforms and models
in mmseg's registries (configs pull it in through ``custom_imports``).
"""
from .version import __version__  # noqa: F401
from . import datasets, engine, evaluation, models  # noqa: F401,E402
