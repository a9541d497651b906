"""Decode heads of the segmentors, registered in mmseg's ``MODELS``.

Every module of this package is imported (registration side effects):
``cosine_head`` (``CosineSimilarityHead``), ``gem_head`` (``GEMHead``, the
official GEM post-processing), ``freecp_head`` (``FreeCPHead``), ...
"""
from mmseg_ovss.utils.autoimport import import_submodules

import_submodules(__name__, __path__)
