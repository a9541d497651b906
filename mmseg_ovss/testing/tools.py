"""Run the scripts of ``tools/`` in-process (tests, notebooks).

Starting a new interpreter costs seconds per call (torch, mmseg, open_clip
imports); tests that drive ``tools/test.py`` over dozens of configs call the
same ``main(argv)`` a user's command line reaches, without that cost.
"""
import importlib.util

from mmseg_ovss.utils.errors import OVSSDataError
from mmseg_ovss.utils.paths import find_resource

_loaded = {}


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (cached).

    The tools are the package's shipped ones (``find_resource('tools')``:
    the checkout's, or the installed copy under ``mmseg_ovss/.mim/``).
    """
    if name not in _loaded:
        tools_dir = find_resource('tools')
        path = tools_dir / f'{name}.py'
        if not path.is_file():
            known = sorted(p.stem for p in tools_dir.glob('*.py'))
            raise OVSSDataError(
                f'no tool {path}; the tools in {tools_dir} are {known}')
        spec = importlib.util.spec_from_file_location(f'ovss_tool_{name}',
                                                      path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[name] = module
    return _loaded[name]


def run_tool(name: str, argv):
    """Call ``tools/<name>.py``'s ``main(argv)`` and return its result."""
    return load_tool(name).main([str(a) for a in argv])
