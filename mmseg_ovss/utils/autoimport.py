"""Import every module of a package so that its registrations run."""
import importlib
import pkgutil


def import_submodules(package_name: str, package_path) -> list:
    """Import all direct submodules of a package (registration side effects).

    Each method lives in its own module and registers itself in mmseg's
    registries; a package ``__init__`` calls this instead of listing them.
    """
    modules = []
    for info in sorted(pkgutil.iter_modules(package_path), key=lambda m: m.name):
        if info.name.startswith('_'):
            continue
        modules.append(importlib.import_module(f'{package_name}.{info.name}'))
    return modules
