"""Run the scripts of ``tools/`` in-process (tests, notebooks).

Starting a new interpreter costs seconds per call (torch, mmseg, open_clip
imports); tests that drive ``tools/test.py`` over dozens of configs call the
same ``main(argv)`` a user's command line reaches, without that cost.
"""
import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / 'tools'

_loaded = {}


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (cached)."""
    if name not in _loaded:
        path = TOOLS_DIR / f'{name}.py'
        if not path.is_file():
            raise FileNotFoundError(f'no tool {path}')
        spec = importlib.util.spec_from_file_location(f'ovss_tool_{name}', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[name] = module
    return _loaded[name]


def run_tool(name: str, argv):
    """Call ``tools/<name>.py``'s ``main(argv)`` and return its result."""
    return load_tool(name).main([str(a) for a in argv])
