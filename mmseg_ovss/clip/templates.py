"""Prompt templates for class-name queries.

``'openai'``: the 80 ImageNet templates of CLIP (Radford et al., 2021), as
shipped by open_clip; ``'vild'``: the 15 ViLD templates as ZegCLIP averages
them for COCO (:data:`VILD_TEMPLATES`); ``'simple'``: open_clip's short
list; ``'single'``: ``'a photo of a {}.'``; ``'zegclip_single'``:
``'a photo of a {}'`` (no period: ZegCLIP's and CLIP-RC's VOC text, see
:data:`ZEGCLIP_SINGLE_TEMPLATE`); a list of ``'{}'`` strings; or a
UTF-8 text file with one template per line (``data/templates/*.txt``; empty
lines and a byte-order mark are ignored).
"""
from pathlib import Path
from typing import Callable, List, Sequence, Union

from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from mmseg_ovss.clip.vocabulary import read_utf8_text
from mmseg_ovss.utils.errors import OVSSConfigError
from mmseg_ovss.utils.paths import resolve_data_path

TemplateSpec = Union[str, Path, Sequence[str]]
NAMED_TEMPLATES = ('openai', 'vild', 'simple', 'single', 'zegclip_single')

#: The one template of ZegCLIP's and CLIP-RC's VOC text embeddings, without
#: a final period: ``voc12_single.npy`` is built with
#: ``clip.tokenize(f"a photo of a {c}")`` (ZiqinZhou66/ZegCLIP,
#: ``configs/_base_/datasets/text_embedding/get_embedding.ipynb``,
#: ``single_templete``; Jittor/JSeg ships the same file in
#: ``project/clip_rc/text_embedding/`` and tokenizes the same string in
#: ``python/jseg/models/segmentors/clip_rc.py``).
ZEGCLIP_SINGLE_TEMPLATE = 'a photo of a {}'

#: The prompt templates of ViLD (Gu et al., ICLR 2022) as ZegCLIP averages
#: them into its COCO text embeddings (``coco_multi.npy``; ZegCLIP, Zhou et
#: al., CVPR 2023, ``ZiqinZhou66/ZegCLIP``,
#: ``configs/_base_/datasets/text_embedding/get_embedding.ipynb``,
#: ``templates``): 15 templates, in that order.
VILD_TEMPLATES = (
    'a photo of a {}.',
    'a photo of a small {}.',
    'a photo of a medium {}.',
    'a photo of a large {}.',
    'This is a photo of a {}.',
    'This is a photo of a small {}.',
    'This is a photo of a medium {}.',
    'This is a photo of a large {}.',
    'a {} in the scene.',
    'a photo of a {} in the scene.',
    'There is a {} in the scene.',
    'There is the {} in the scene.',
    'This is a {} in the scene.',
    'This is the {} in the scene.',
    'This is one {} in the scene.',
)


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
        if spec == 'vild':
            return _from_strings(VILD_TEMPLATES, spec)
        if spec == 'simple':
            return list(SIMPLE_IMAGENET_TEMPLATES)
        if spec == 'single':
            return _from_strings(['a photo of a {}.'], spec)
        if spec == 'zegclip_single':
            return _from_strings([ZEGCLIP_SINGLE_TEMPLATE], spec)
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


def templates_key(templates: Sequence[Callable[[str], str]]) -> tuple:
    """Hashable identity of loaded templates (for caching): each template
    rendered with ``'{}'`` in the name's place, so equal prompts give equal
    keys whatever list, file or name they came from."""
    return tuple(template('{}') for template in templates)
