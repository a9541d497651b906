"""Building blocks shared by several methods (e.g. the guided Swin block of
CAT-Seg's spatial aggregation and DCP-CLIP's spatial-enhanced decoder)."""
from mmseg_ovss.utils.autoimport import import_submodules

import_submodules(__name__, __path__)
