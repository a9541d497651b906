"""Text encoders, registered in mmseg's ``MODELS``.

Every module of this package is imported (registration side effects):
``open_clip_text_encoder`` (``OpenCLIPTextEncoder``, open_clip's text tower,
frozen or trainable).
"""
from mmseg_ovss.utils.autoimport import import_submodules

import_submodules(__name__, __path__)
