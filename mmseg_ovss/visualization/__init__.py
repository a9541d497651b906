"""Stage visualisations of the training-free methods (FreeCP, PnP-OVSS)
and the rendering shared by ``tools/demo.py`` and
``tools/freecp_visualize.py``."""
