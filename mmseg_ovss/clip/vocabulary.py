"""Class vocabularies: names, synonyms and the background class.

A vocabulary file holds one class per line; a line may hold several
synonyms separated by ``", "`` and each synonym is its own text query
(FACTS §1). VOC21 / COCO-Object line 0 lists background stuff words.
"""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError
from mmseg_ovss.utils.paths import resolve_data_path

ClassSpec = Union[str, Sequence[str]]
_SEPARATOR = re.compile(r'\s*,\s*')


def split_synonyms(line: str) -> List[str]:
    """``'person, person in shirt'`` -> ``['person', 'person in shirt']``."""
    return [s for s in _SEPARATOR.split(line.strip())]


@dataclass(frozen=True)
class Vocabulary:
    """Synonyms of each class and the background class index (or None)."""
    synonyms: tuple
    background_class: Optional[int] = None

    def __post_init__(self):
        if not self.synonyms:
            raise OVSSConfigError(
                'the vocabulary is empty; give at least one class name (a '
                'class-name file with one class per line, or a list)')
        display = {}
        for index, names in enumerate(self.synonyms):
            if not names or any(not n.strip() for n in names):
                raise OVSSConfigError(
                    f'class {index} of the vocabulary has an empty name '
                    f'({list(names)!r}); remove empty lines and stray commas')
            lowered = [n.strip().lower() for n in names]
            if len(set(lowered)) != len(lowered):
                raise OVSSConfigError(
                    f'class {index} lists a synonym twice ({list(names)!r}); '
                    'each synonym of a class must be unique')
            key = tuple(lowered)
            if key in display:
                raise OVSSConfigError(
                    f'duplicate class {", ".join(names)!r} (classes '
                    f'{display[key]} and {index}); remove the repeated entry '
                    'or give the classes different names or synonyms')
            display[key] = index
        # A name shared by two classes that differ otherwise is allowed:
        # "bed" in COCO-Object's background words and the class "bed" (as in
        # the SCLIP files), ADE-847's "screen, crt screen" and "screen,
        # silver screen, ...". Equal queries score the same and the argmax
        # keeps the lower class index.
        if self.background_class is not None and not (
                0 <= self.background_class < len(self.synonyms)):
            raise OVSSConfigError(
                f'background_class {self.background_class} is not a class '
                f'index of a {len(self.synonyms)}-class vocabulary')

    @property
    def class_names(self) -> List[str]:
        return [names[0] for names in self.synonyms]

    @property
    def num_classes(self) -> int:
        return len(self.synonyms)

    @property
    def queries(self) -> List[str]:
        return [name for names in self.synonyms for name in names]

    @property
    def query_to_class(self) -> List[int]:
        return [i for i, names in enumerate(self.synonyms) for _ in names]

    @classmethod
    def from_names(cls, classes: Sequence[ClassSpec],
                   background_class: Optional[int] = None) -> 'Vocabulary':
        """From a list whose items are ``'a, b'`` strings or lists."""
        if isinstance(classes, str):
            raise OVSSConfigError(
                'a vocabulary must be a list of class names, got the string '
                f'{classes!r}; pass e.g. [{classes!r}]')
        synonyms = []
        for item in classes:
            names = split_synonyms(item) if isinstance(item, str) else [
                str(n).strip() for n in item]
            synonyms.append(tuple(names))
        return cls(tuple(synonyms), background_class)

    @classmethod
    def from_file(cls, path: Union[str, Path],
                  background_class: Optional[int] = None) -> 'Vocabulary':
        """Read a class-name file (one class per line)."""
        try:
            resolved = resolve_data_path(path)
        except OVSSDataError as err:
            raise OVSSDataError(
                f'class-name file {str(path)!r} not found; create it with one '
                'class per line (synonyms separated by ", ") or drop '
                'class_names to use the dataset classes') from err
        lines = resolved.read_text(encoding='utf-8').splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        return cls.from_names(lines, background_class)
