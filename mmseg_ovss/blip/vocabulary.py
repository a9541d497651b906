"""Class names for the PnP-OVSS caption.

A vocabulary is a class-name file (one class a line, synonyms separated by
", ") or a list given in the config, read and checked by the shared
:class:`~mmseg_ovss.clip.vocabulary.Vocabulary`. The caption uses each
class's first synonym (its display name); per-image JSON lists may use any
synonym.
"""
from pathlib import Path
from typing import List, Sequence, Union

from mmseg_ovss.clip.vocabulary import Vocabulary


def read_synonyms(source: Union[str, Path, Sequence]) -> List[List[str]]:
    """Synonym lists of every class from a file path or a list.

    List items may be strings (``"tv monitor, monitor"``) or lists of
    strings.
    """
    if isinstance(source, (str, Path)):
        vocabulary = Vocabulary.from_file(source)
    else:
        vocabulary = Vocabulary.from_names(list(source))
    return [list(names) for names in vocabulary.synonyms]
