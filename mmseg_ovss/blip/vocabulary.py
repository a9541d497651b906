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


def read_synonyms(source: Union[str, Path, Sequence],
                  shared_synonyms: str = 'error') -> List[List[str]]:
    """Synonym lists of every class from a file path or a list.

    List items may be strings (``"tv monitor, monitor"``) or lists of
    strings. ``shared_synonyms='allow'`` reads a file whose lines share a
    synonym (COCO-Object's reference file lists "bed" among the background
    words and as a class) with a warning instead of an error.
    """
    if isinstance(source, (str, Path)):
        vocabulary = Vocabulary.from_file(source,
                                          shared_synonyms=shared_synonyms)
    else:
        vocabulary = Vocabulary.from_names(list(source),
                                           shared_synonyms=shared_synonyms)
    return [list(names) for names in vocabulary.synonyms]
