"""Locate the package's data files, configs and tools from any working directory.

A checkout keeps them at the repository root (``data/class_names``,
``configs``, ``tools``, ...). A wheel (``pip install .``) carries a copy under
``mmseg_ovss/.mim/`` with the same relative paths, as MMSegmentation ships its
configs under ``mmseg/.mim/``; an editable install links them there. Lookups
try the repository root first, when there is one, then ``.mim``.
"""
from pathlib import Path
from typing import List, Optional, Union

from mmseg_ovss.utils.errors import OVSSDataError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
MIM_DIR = PACKAGE_DIR / '.mim'


def _find_repo_root() -> Optional[Path]:
    """The checkout that holds the package, or None for an installed copy."""
    root = PACKAGE_DIR.parent
    if (root / 'setup.py').is_file() and (root / 'configs').is_dir():
        return root
    return None


REPO_ROOT = _find_repo_root()


def resource_roots() -> List[Path]:
    """Folders that hold ``data/``, ``configs/`` and ``tools/``, in lookup order."""
    roots = [] if REPO_ROOT is None else [REPO_ROOT]
    if MIM_DIR.is_dir():
        roots.append(MIM_DIR)
    return roots


def find_resource(path: Union[str, Path]) -> Path:
    """A file or folder shipped with the package (``'configs/_base_'``).

    Raises:
        OVSSDataError: when no resource root holds it.
    """
    for root in resource_roots():
        if (root / path).exists():
            return root / path
    raise OVSSDataError(
        f'{str(path)!r} is not shipped with mmseg_ovss (looked in '
        f'{_looked_in()}); reinstall the package (pip install .) or run from '
        'a checkout of the repository')


def resolve_data_path(path: Union[str, Path], must_exist: bool = True) -> Path:
    """Resolve a data file path.

    Absolute paths and paths that exist relative to the current directory are
    used as given; otherwise the path is taken relative to the repository
    root, then to the installed ``mmseg_ovss/.mim/`` (so
    ``data/class_names/voc21.txt`` works from any cwd, checkout or wheel).
    A path found nowhere is returned relative to the repository root (the
    current directory for an installed package) when ``must_exist`` is False.
    """
    candidate = Path(path).expanduser()
    if candidate.exists():
        return candidate
    if not candidate.is_absolute():
        for root in resource_roots():
            if (root / candidate).exists():
                return root / candidate
    if must_exist:
        where = (str(candidate) if candidate.is_absolute()
                 else f'{Path.cwd()}, {_looked_in()}')
        raise OVSSDataError(
            f'data file {str(path)!r} not found (looked in {where}); pass an '
            'existing path, absolute or relative to the current directory or '
            'the repository root')
    if candidate.is_absolute() or REPO_ROOT is None:
        return candidate
    return REPO_ROOT / candidate


def _looked_in() -> str:
    roots = resource_roots()
    if not roots:
        return f'no repository root and no {MIM_DIR}'
    return ' and '.join(str(r) for r in roots)
