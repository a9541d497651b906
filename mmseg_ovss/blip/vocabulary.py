"""Class names for the PnP-OVSS caption.

A vocabulary is a class-name file (one class a line, synonyms separated by
", ") or a list given in the config. The caption uses each class's first
synonym (its display name); per-image JSON lists may use any synonym.
"""
from pathlib import Path
from typing import List, Sequence, Union

from mmseg_ovss.utils.errors import OVSSConfigError
from mmseg_ovss.utils.paths import resolve_data_path


def resolve_path(path: Union[str, Path]) -> str:
    return str(resolve_data_path(path))


def read_synonyms(source: Union[str, Sequence]) -> List[List[str]]:
    """Synonym lists of every class from a file path or a list.

    List items may be strings (``"tv monitor, monitor"``) or lists of
    strings.
    """
    if isinstance(source, (str, Path)):
        with open(resolve_path(source)) as f:
            lines = [line.rstrip('\n') for line in f]
        while lines and not lines[-1].strip():
            lines.pop()
        items = lines
    else:
        items = list(source)
    synonyms = []
    for i, item in enumerate(items):
        names = ([n.strip() for n in item.split(',')]
                 if isinstance(item, str) else [str(n).strip() for n in item])
        names = [n for n in names if n]
        if not names:
            raise OVSSConfigError(
                f'class #{i} of the vocabulary has no name; fix {source!r}.')
        synonyms.append(names)
    if not synonyms:
        raise OVSSConfigError(f'the vocabulary {source!r} is empty.')
    return synonyms
