"""Lazy re-exports for package __init__ files: a name is imported from its module on first use, not before."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable
from importlib import import_module
from typing import Any


class _LazyPackage(types.ModuleType):
    """A package whose re-exported names are imported on first access.

    A submodule named like a re-exported function (``calibration/calibrate.py`` defines ``calibrate()``) is not
    bound over the function when it is imported: ``oodgate.calibration.calibrate`` stays the function; the module
    is ``sys.modules['oodgate.calibration.calibrate']``.
    """

    _lazy_exports: dict[str, str]
    _lazy_modules: frozenset[str]

    def __getattr__(self, name: str) -> Any:
        exports = self.__dict__.get("_lazy_exports", {})
        if name not in exports:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        module = import_module(exports[name], self.__name__)
        return module if name in self._lazy_modules else getattr(module, name)

    def __setattr__(self, name: str, value: Any) -> None:
        exports = self.__dict__.get("_lazy_exports", {})
        if name in exports and name not in self._lazy_modules and isinstance(value, types.ModuleType):
            return  # the import system binding a submodule of the same name: keep the re-exported function
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.__dict__.get("_lazy_exports", {})})


def lazy_exports(package: str, exports: dict[str, str], modules: Iterable[str] = ()) -> None:
    """Make ``package`` re-export lazily: ``exports`` maps a name to the module that defines it (relative names such
    as '.session' are resolved against ``package``); names in ``modules`` are that module itself
    (``oodgate.metrics`` -> the module ``oodgate.evaluation.metrics``)."""
    module = sys.modules[package]
    module.__class__ = _LazyPackage
    module.__dict__["_lazy_exports"] = dict(exports)
    module.__dict__["_lazy_modules"] = frozenset(modules)
