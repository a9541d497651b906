from . import backbones, heads, losses, segmentors  # noqa: F401
