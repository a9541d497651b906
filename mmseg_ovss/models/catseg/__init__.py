"""CAT-Seg cost-volume components (registered in mmseg's MODELS)."""
from mmseg_ovss.utils.autoimport import import_submodules

import_submodules(__name__, __path__)
