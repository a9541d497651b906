from . import (backbones, catseg, cliprc, dcpclip, heads, losses,  # noqa: F401
               segmentors, text_encoders)
