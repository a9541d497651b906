"""FreeCP's steps as a small library (plain functions, no registrations).

``cam`` (Eq. 1), ``affinity`` (Eq. 2), ``refinement`` (Eq. 3),
``consistency`` (Eq. 4), ``purification`` (Eqs. 5-8), ``crops``,
``descriptions``, ``pipeline`` (the steps in order, with the options of
the paper and of the authors' code) and ``gt_vocabulary`` (the
ground-truth vocabulary oracle of Fig. 1b and Table 1). The decode head is
``mmseg_ovss.models.heads.freecp_head.FreeCPHead``.
"""
from .pipeline import PURIFICATION_ORDERS, FreeCPWindowPipeline

__all__ = ['FreeCPWindowPipeline', 'PURIFICATION_ORDERS']
