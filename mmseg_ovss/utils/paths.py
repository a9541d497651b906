"""Locate the package's data files from any working directory."""
from pathlib import Path
from typing import Union

from mmseg_ovss.utils.errors import OVSSDataError

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_data_path(path: Union[str, Path], must_exist: bool = True) -> Path:
    """Resolve a data file path.

    Absolute paths and paths that exist relative to the current directory are
    used as given; otherwise the path is taken relative to the repository
    root that holds ``data/`` (so ``data/class_names/voc21.txt`` works from
    any cwd).
    """
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        resolved = candidate
    else:
        resolved = REPO_ROOT / candidate
    if must_exist and not resolved.exists():
        raise OVSSDataError(
            f'data file {str(path)!r} not found (looked in {Path.cwd()} and '
            f'{REPO_ROOT}); pass an existing path, absolute or relative to '
            'the repository root')
    return resolved
