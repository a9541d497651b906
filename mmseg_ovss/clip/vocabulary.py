"""Class vocabularies: names, synonyms and the background class.

A class-name file is UTF-8 text (a leading byte-order mark is dropped) with
one class per line, in class-index order; a line may hold several synonyms
separated by commas (``", "`` in the shipped files; spaces around a comma
are ignored). Each synonym is its own text query and a class takes the max
over its synonyms, as in the class files of SCLIP (``wangf3014/SCLIP``,
``configs/cls_*.txt``), whose VOC21 / COCO-Object line 0 lists background
stuff words.

Rules (each broken rule is an error naming the line and the fix):

- names are compared after Unicode NFKC normalisation, case folding and
  whitespace collapsing ("Cat", "cat " and "ｃａｔ" are the same name);
- empty trailing lines are ignored; an empty line elsewhere, an empty
  synonym (stray comma) or a synonym repeated on its line is an error;
- two lines with the same synonyms, in any order, are an error (a warning
  with ``shared_synonyms='allow'``: the later line can never win);
- a synonym on two lines is an error: its query scores the same for both
  classes, the argmax always gives the tie to the earlier line, and a class
  whose every synonym is on an earlier line can never win. Reference files
  that have such a synonym (SCLIP's COCO-Object file lists "bed" both in
  the background words and as a class) load with
  ``shared_synonyms='allow'``, which warns about the classes that can
  never win.
"""
import codecs
import json
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError
from mmseg_ovss.utils.paths import resolve_data_path

ClassSpec = Union[str, Sequence[str]]
BACKGROUND_NAME = 'background'
SHARED_SYNONYMS = ('error', 'allow')
_SEPARATOR = re.compile(r'\s*,\s*')
_FOREIGN_BOMS = ((codecs.BOM_UTF32_LE, 'UTF-32'),
                 (codecs.BOM_UTF32_BE, 'UTF-32'),
                 (codecs.BOM_UTF16_LE, 'UTF-16'),
                 (codecs.BOM_UTF16_BE, 'UTF-16'))
_MAX_LISTED = 10


def read_utf8_text(path: Union[str, Path], what: str) -> str:
    """Text of a UTF-8 file without its byte-order mark, ``\\n`` newlines.

    Args:
        path: an existing file.
        what: what the file is, for error messages ("class-name file").
    Raises:
        OVSSDataError: unreadable, UTF-16/32, NUL bytes or not UTF-8 (the
            message gives the byte offset, line and how to convert it).
    """
    shown = repr(str(path))
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise OVSSDataError(f'cannot read {what} {shown}: {err}') from err
    for bom, encoding in _FOREIGN_BOMS:
        if data.startswith(bom):
            raise OVSSDataError(
                f'{what} {shown} is {encoding} text (it starts with a '
                f'{encoding} byte-order mark); save it as UTF-8, e.g. '
                f'iconv -f {encoding} -t UTF-8 old > new')
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as err:
        line = data.count(b'\n', 0, err.start) + 1
        raise OVSSDataError(
            f'{what} {shown} is not UTF-8: byte 0x{data[err.start]:02x} at '
            f'offset {err.start} (line {line}) cannot be decoded '
            f'({err.reason}); save the file as UTF-8, e.g. iconv -f '
            'LATIN1 -t UTF-8 old > new for a Latin-1 (Windows-1252) file'
        ) from None
    if '\x00' in text:
        offset = data.index(b'\x00')
        raise OVSSDataError(
            f'{what} {shown} holds a NUL byte at offset {offset}: it is '
            'binary or UTF-16 without a byte-order mark; save it as UTF-8')
    if text.startswith('\ufeff'):
        text = text[1:]
    return text.replace('\r\n', '\n').replace('\r', '\n')


def name_key(name: str) -> str:
    """How names are compared: NFKC, case-folded, whitespace collapsed."""
    return ' '.join(unicodedata.normalize('NFKC', name).casefold().split())


def clean_name(name: str) -> str:
    """A synonym as stored: NFC, inner whitespace runs as one space."""
    return unicodedata.normalize('NFC', ' '.join(name.split()))


def split_synonyms(line: str) -> List[str]:
    """``'person, person in shirt'`` -> ``['person', 'person in shirt']``
    (empty strings stay, so that a stray comma can be reported)."""
    return [clean_name(s) for s in _SEPARATOR.split(line.strip())]


def _short(names: Sequence[str], limit: int = 60) -> str:
    text = ', '.join(names)
    return repr(text if len(text) <= limit else text[:limit - 1] + '…')


def find_background_class(synonyms: Sequence[Sequence[str]],
                          dataset_classes: Optional[Sequence[str]] = None
                          ) -> Optional[int]:
    """The ``background_class='auto'`` rule: the class named "background".

    A class is named "background" when one of its synonyms is that word
    (compared with :func:`name_key`: any case, surrounding or repeated
    spaces); a stuff-word line ("sky, wall, ...") is not, but it is the
    background when the dataset's class at its index is (VOC21's metainfo
    with SCLIP's class file). None when no class is named so.
    """
    found = {i for i, names in enumerate(synonyms)
             if any(name_key(n) == BACKGROUND_NAME for n in names)}
    for index, item in enumerate(dataset_classes or ()):
        names = split_synonyms(item) if isinstance(item, str) else item
        if index < len(synonyms) and any(
                name_key(str(n)) == BACKGROUND_NAME for n in names):
            found.add(index)
    if len(found) > 1:
        raise OVSSConfigError(
            f'classes {sorted(found)} are all named "background"; keep one '
            'or set text.background_class to its index')
    return found.pop() if found else None


@dataclass(frozen=True)
class Vocabulary:
    """Synonyms of each class and the background class index (or None).

    Args:
        synonyms: one tuple of names per class.
        background_class: index of the background class, or None.
        shared_synonyms: ``'error'`` (default) or ``'allow'``: accept a
            synonym on several lines (a warning names the classes that can
            never win), to run a reference file unchanged.
        source: where the classes come from ("line N of <file>" in
            errors); not part of the vocabulary's identity.
    """
    synonyms: tuple
    background_class: Optional[int] = None
    shared_synonyms: str = 'error'
    source: Optional[str] = field(default=None, compare=False)

    def __post_init__(self):
        if isinstance(self.synonyms, str) or not self.synonyms:
            raise OVSSConfigError(
                'the vocabulary is empty; give at least one class name (a '
                'class-name file with one class per line, or a list)')
        if self.shared_synonyms not in SHARED_SYNONYMS:
            raise OVSSConfigError(
                f'shared_synonyms={self.shared_synonyms!r} is not one of '
                f'{SHARED_SYNONYMS}')
        object.__setattr__(self, 'synonyms', tuple(
            self._checked_names(i, names)
            for i, names in enumerate(self.synonyms)))
        self._check_lines()
        background = self.background_class
        if background is not None and (
                isinstance(background, bool) or not isinstance(background, int)
                or not 0 <= background < len(self.synonyms)):
            raise OVSSConfigError(
                f'background_class {background!r} is not a class index of a '
                f'{len(self.synonyms)}-class vocabulary; give an index from 0 '
                f'to {len(self.synonyms) - 1} or None')

    # ------------------------------------------------------------ checking
    def _where(self, index: int) -> str:
        return f'line {index + 1}' if self.source else f'class {index}'

    def _origin(self) -> str:
        return (f'class-name file {self.source!r}' if self.source
                else 'the vocabulary')

    def _fail(self, message: str):
        raise OVSSConfigError(f'{self._origin()}: {message}')

    def _checked_names(self, index: int, names) -> Tuple[str, ...]:
        names = (names, ) if isinstance(names, str) else tuple(names)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            self._fail(f'{self._where(index)} has a name that is not a '
                       f'string ({bad[0]!r}); write class names as strings')
        if not names or all(not n.strip() for n in names):
            self._fail(
                f'{self._where(index)} is empty; ' + (
                    'every line is one class (class index = line number - '
                    '1), so an empty line shifts the classes after it: '
                    'delete it or write the class name there' if self.source
                    else 'remove the empty name'))
        if any(not n.strip() for n in names):
            self._fail(
                f'{self._where(index)} ({", ".join(names)!r}) has an empty '
                'synonym: a stray comma at the start or end, or two commas '
                'in a row; remove it')
        keys = [name_key(n) for n in names]
        repeated = sorted({n for n, k in zip(names, keys)
                           if keys.count(k) > 1})
        if repeated:
            self._fail(f'{self._where(index)} lists the synonym '
                       f'{repeated[0]!r} twice; each synonym of a class must '
                       'be unique')
        return names

    def _check_lines(self) -> None:
        keys = [[name_key(n) for n in names] for names in self.synonyms]
        first_set: Dict[frozenset, int] = {}
        for index, key in enumerate(keys):
            earlier = first_set.setdefault(frozenset(key), index)
            # 'allow': a repeated line is a class whose every synonym is on
            # an earlier line, which the warning below names
            if earlier != index and self.shared_synonyms != 'allow':
                how = 'repeats' if keys[earlier] == key else \
                    'lists, in another order, the same synonyms as'
                self._fail(
                    f'duplicate class: {self._where(index)} '
                    f'({_short(self.synonyms[index])}) {how} '
                    f'{self._where(earlier)} '
                    f'({_short(self.synonyms[earlier])}); remove one of them '
                    'or give the classes different names')
        owner: Dict[str, int] = {}
        shared: List[Tuple[str, int, int]] = []
        for index, key in enumerate(keys):
            for name, k in zip(self.synonyms[index], key):
                earlier = owner.setdefault(k, index)
                if earlier != index:
                    shared.append((name, earlier, index))
        if not shared:
            return
        never = [i for i, key in enumerate(keys)
                 if all(owner[k] < i for k in key)]
        if self.shared_synonyms == 'allow':
            if never:
                warnings.warn(
                    f'{self._origin()} (shared_synonyms="allow"): '
                    + ', '.join(f'{self._where(i)} '
                                f'({_short(self.synonyms[i])})'
                                for i in never[:_MAX_LISTED])
                    + f'{" and more" if len(never) > _MAX_LISTED else ""} '
                    'can never win (all their synonyms are on earlier lines '
                    'too)', stacklevel=3)
            return
        listed = [
            f'{name!r} is on {self._where(a)} ({_short(self.synonyms[a])}) '
            f'and {self._where(b)} ({_short(self.synonyms[b])})'
            + (f', so {self._where(b)} can never win' if b in never else '')
            for name, a, b in shared[:_MAX_LISTED]]
        more = len(shared) - len(listed)
        self._fail(
            'a synonym may name one class only (its query scores the same '
            'for both classes and the argmax always picks the earlier one): '
            + '; '.join(listed) + (f'; and {more} more' if more > 0 else '')
            + '. Remove each shared synonym from all lines but one or make '
            'it specific; to run a reference file unchanged, pass '
            "shared_synonyms='allow'")

    # ------------------------------------------------------------- access
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

    # --------------------------------------------------------- constructors
    @classmethod
    def from_names(cls, classes: Sequence[ClassSpec],
                   background_class: Union[int, str, None] = None,
                   shared_synonyms: str = 'error',
                   source: Optional[str] = None) -> 'Vocabulary':
        """From a list whose items are ``'a, b'`` strings or lists of names.

        ``background_class='auto'`` applies :func:`find_background_class`.
        """
        if isinstance(classes, str):
            raise OVSSConfigError(
                'a vocabulary must be a list of class names, got the string '
                f'{classes!r}; pass e.g. [{classes!r}]')
        synonyms = []
        for item in classes:
            if isinstance(item, str):
                synonyms.append(tuple(split_synonyms(item)))
            elif isinstance(item, (list, tuple)):
                synonyms.append(tuple(
                    clean_name(n.strip()) if isinstance(n, str) else n
                    for n in item))
            else:
                synonyms.append((item, ))  # rejected with its position
        if background_class == 'auto':
            background_class = find_background_class(synonyms)
        return cls(tuple(synonyms), background_class, shared_synonyms,
                   source)

    @classmethod
    def from_file(cls, path: Union[str, Path],
                  background_class: Union[int, str, None] = None,
                  shared_synonyms: str = 'error') -> 'Vocabulary':
        """Read a class-name file (UTF-8, one class per line)."""
        try:
            resolved = resolve_data_path(path)
        except OVSSDataError as err:
            raise OVSSDataError(
                f'class-name file {str(path)!r} not found; create it with one '
                'class per line (synonyms separated by ", ") or drop '
                'class_names to use the dataset classes') from err
        if resolved.is_dir():
            raise OVSSDataError(
                f'class-name file {str(path)!r} is a folder; point to a .txt '
                'file with one class per line')
        lines = read_utf8_text(resolved, 'class-name file').split('\n')
        while lines and not lines[-1].strip():
            lines.pop()
        return cls.from_names(lines, background_class, shared_synonyms,
                              source=str(path))


def read_name_lists(mapping: Union[None, str, Path, dict], what: str,
                    meaning: str, allow_empty: bool = False
                    ) -> Dict[str, Tuple[str, ...]]:
    """Class name -> tuple of names, from a dict or a JSON file whose
    values are a name or a list of names (``class_name_map`` of the
    open-vocabulary segmentors, ``name_map`` of DCP-CLIP's tag validation).

    Args:
        mapping: None (empty), a dict, or a JSON file path
            (:func:`resolve_data_path`).
        what: the setting's name in error messages.
        meaning: what the map maps, for the fix in error messages (e.g.
            ``'dataset class names to a prompt name'``).
        allow_empty: an empty list is a valid value (else every value needs
            a non-blank name).
    """
    if mapping is None:
        return {}
    if isinstance(mapping, (str, Path)):
        try:
            path = resolve_data_path(mapping)
            mapping = json.loads(Path(path).read_text(encoding='utf-8'))
        except (OVSSDataError, OSError, json.JSONDecodeError) as err:
            raise OVSSConfigError(
                f'{what} file {str(mapping)!r} cannot be read ({err}); give '
                f'a JSON object mapping {meaning} or a list of names'
            ) from err
    if not isinstance(mapping, dict):
        raise OVSSConfigError(
            f'{what} must be a dict or a JSON file path, got '
            f'{type(mapping).__name__}')
    out = {}
    for key, value in mapping.items():
        names = (value, ) if isinstance(value, str) else tuple(value or ())
        valid = all(isinstance(n, str) for n in names) and (
            allow_empty or (names and all(n.strip() for n in names)))
        if not valid:
            empty = ' (an empty list marks the class unseen)' \
                if allow_empty else ' (non-empty)'
            raise OVSSConfigError(
                f'{what}[{key!r}] = {value!r}: give a name or a list of '
                f'names{empty}')
        out[str(key)] = names
    return out
