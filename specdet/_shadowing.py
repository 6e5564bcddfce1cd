"""Keep the source checkout's folders from standing in for other packages of the same name.

The repository keeps the layout the design asks for (``models/``, ``train/``,
``export/``, ``runtime/``, ``serve/``, ``kernels/``, ``benchmarks/`` at the
root), installed as ``specdet.models`` and so on. But ``python -m ...``,
``python -c`` and ``python -m pytest`` put the working folder first on
``sys.path``, and from the repository root a plain ``import kernels`` (which
transformers 5.25 does for the ``kernels`` package it depends on) would find
our folder instead. Renaming the folders would break the layout; a test runner
option would not cover ``python -m specdet...``; so ``import specdet`` (which
every entry point and every subpackage does first) wraps the finder of the
root's ``sys.path`` entry (a path hook) so that it does not see those seven
names: Python then finds them as if the root were not on the path, the
installed package of that name or nothing (``find_spec`` returns None and
``import`` raises ``ModuleNotFoundError``, exactly as without us). Code that
imports one of those names before anything imported specdet (``python -c
"import kernels"`` in the root) runs the folder's ``__init__.py`` under the
bare name; each ends with :func:`hand_over`, which puts the installed package
in its place (or raises ``ModuleNotFoundError``). ``specdet.kernels`` and
the other subpackages are untouched (they are found by their ``specdet.``
names). Nothing is installed outside a source checkout (a wheel has no such
folders at its root).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The folders at the root that install as specdet.<name> (pyproject.toml's package-dir).
SUBPACKAGES = ("benchmarks", "export", "kernels", "models", "runtime", "serve", "train")


def _is_root(entry: str) -> bool:
    try:
        return Path(entry or os.getcwd()).resolve() == ROOT
    except (OSError, RuntimeError):  # a path entry that cannot be resolved is not ours
        return False


class RootEntryFinder:
    """The finder of the repository root's ``sys.path`` entry, blind to the seven folder names."""

    def __init__(self, finder):
        self._finder = finder  # the finder the other path hooks made for the root (a FileFinder)

    def find_spec(self, fullname, target=None):
        return None if fullname in SUBPACKAGES else self._finder.find_spec(fullname, target)

    def invalidate_caches(self) -> None:
        self._finder.invalidate_caches()


def _root_hook(entry: str) -> RootEntryFinder:
    """A ``sys.path_hooks`` entry: the usual finder for the root, wrapped; ImportError for every other entry."""
    if not _is_root(entry):
        raise ImportError("not the repository root")
    for hook in sys.path_hooks:
        if hook is not _root_hook:
            try:
                return RootEntryFinder(hook(entry))
            except ImportError:
                continue
    raise ImportError("no finder for the repository root")


def install() -> None:
    """Put :func:`_root_hook` first on ``sys.path_hooks``, once, in a source checkout, and drop the
    root's cached finder (the one that found ``specdet`` itself) so that the wrapped one replaces it."""
    if not (ROOT / "pyproject.toml").is_file() or _root_hook in sys.path_hooks:
        return
    sys.path_hooks.insert(0, _root_hook)
    for entry in [e for e in sys.path_importer_cache if isinstance(e, str) and _is_root(e)]:
        del sys.path_importer_cache[entry]


def hand_over(name: str) -> None:
    """Called last by each of the seven folders' ``__init__.py`` with its ``__name__``: imported under its bare name
    (``kernels``, not ``specdet.kernels``), the module becomes the installed package of that name."""
    if name not in SUBPACKAGES:
        return  # imported as specdet.<name>: the normal case
    install()
    spec = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if not _is_root(p)])
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # what the import statement returns once this __init__.py has run
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
