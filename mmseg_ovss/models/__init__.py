from . import backbones, heads, losses, segmentors, text_encoders  # noqa: F401
