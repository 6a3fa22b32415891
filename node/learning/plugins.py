"""User code named in a config: ``"module.path:function"`` specs and installed plugins.

A config names a user's model factory or data loader as ``"module.path:function"``; the folders
in ``[run] import_path`` (the config file's own folder first, added when the file is read) are on
the import path, so a ``model.py`` next to ``peer.toml`` works. Installed packages add models and
data sets by name through the entry-point groups ``decent.models`` and ``decent.datasets``; their
objects follow the same contracts as a factory and a loader (``fn(**options)``).
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

MODEL_GROUP, DATASET_GROUP = "decent.models", "decent.datasets"


def add_import_path(folders: Sequence[str]) -> None:
    """Put ``folders`` at the front of ``sys.path`` (once each)."""
    for folder in reversed(list(folders)):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def import_object(spec: str, *, where: str, import_path: Sequence[str] = ()) -> Callable[..., Any]:
    """The callable ``spec`` = ``"module.path:function"`` names; errors name ``where``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{where}: expected 'module.path:function', got {spec[:80]!r}")
    add_import_path(import_path)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user's module can fail in any way while importing
        raise ValueError(f"{where}: cannot import {module_name!r} ({type(exc).__name__}: "
                         f"{str(exc)[:200]})") from None
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{where}: module {module_name!r} has no {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{where}: {spec!r} is a {type(obj).__name__}, not a function")
    return obj


def plugin_names(group: str) -> tuple[str, ...]:
    """Names installed packages register under the entry-point ``group`` (scanned once per
    import path: the schema asks for every config it validates)."""
    return _names_on_path(group, tuple(sys.path))


@functools.lru_cache(maxsize=32)
def _names_on_path(group: str, path: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(ep.name for ep in entry_points(group=group)))


def load_plugin(group: str, name: str) -> Callable[..., Any] | None:
    """The object a package registered as ``name`` in ``group``, or None."""
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    return None
