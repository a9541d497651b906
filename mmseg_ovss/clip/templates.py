"""Prompt templates for class-name queries.

``'openai'``: the 80 ImageNet templates of CLIP (Radford et al., 2021), as
shipped by open_clip; ``'simple'``: open_clip's short list; ``'single'``:
``'a photo of a {}.'``; a list of ``'{}'`` strings; or a UTF-8 text file
with one template per line (``data/templates/*.txt``; empty lines and a
byte-order mark are ignored).
"""
from pathlib import Path
from typing import Callable, List, Sequence, Union

from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from mmseg_ovss.clip.vocabulary import read_utf8_text
from mmseg_ovss.utils.errors import OVSSConfigError
from mmseg_ovss.utils.paths import resolve_data_path

TemplateSpec = Union[str, Path, Sequence[str]]
NAMED_TEMPLATES = ('openai', 'simple', 'single')


def _from_strings(templates: Sequence[str], origin: str) -> List[Callable]:
    if not templates:
        raise OVSSConfigError(f'no prompt templates in {origin}')
    for template in templates:
        if template.count('{}') != 1:
            raise OVSSConfigError(
                f'prompt template {template!r} ({origin}) must contain '
                "exactly one '{}' where the class name goes")
    return [template.format for template in templates]


def load_templates(spec: TemplateSpec) -> List[Callable[[str], str]]:
    """Templates as callables ``name -> prompt``."""
    if isinstance(spec, Path):
        spec = str(spec)
    if isinstance(spec, str):
        if spec == 'openai':
            return list(OPENAI_IMAGENET_TEMPLATES)
        if spec == 'simple':
            return list(SIMPLE_IMAGENET_TEMPLATES)
        if spec == 'single':
            return _from_strings(['a photo of a {}.'], spec)
        if spec.endswith('.txt'):
            path = resolve_data_path(spec)
            lines = [ln.strip() for ln in
                     read_utf8_text(path, 'template file').split('\n')]
            return _from_strings([ln for ln in lines if ln], str(path))
        raise OVSSConfigError(
            f'unknown prompt templates {spec!r}; use one of '
            f'{NAMED_TEMPLATES}, a list of strings with "{{}}", or a .txt '
            'file with one template per line')
    return _from_strings(list(spec), 'the config')


def templates_key(spec: TemplateSpec) -> tuple:
    """Hashable identity of a template spec (for caching)."""
    return (str(spec), ) if isinstance(spec, (str, Path)) else tuple(spec)
