"""Registered backbones: the open_clip image tower and its block hooks."""
from mmseg_ovss.utils.autoimport import import_submodules

from .open_clip_vit import CLIPViTTokens, OpenCLIPViT
from .visual_prompts import DeepVisualPrompts

import_submodules(__name__, __path__)

__all__ = ['OpenCLIPViT', 'CLIPViTTokens', 'DeepVisualPrompts']
