"""Lazy names for a package's ``__init__`` (PEP 562): each is imported from its module on first use.

    __getattr__, __dir__ = lazy_attributes(__name__, {"load": "phi3lab.runtime.loading"}, submodules=True)

keeps ``import package`` cheap while ``package.load``, ``from package import load``, ``__all__``
and ``dir(package)`` behave as if everything had been imported eagerly.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, exports: dict[str, str], *, submodules: bool = False
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose names ``exports`` maps to their modules.

    A name is imported once, then stored on the package (later lookups never reach
    ``__getattr__``).  With ``submodules``, any other public name is tried as a submodule, as
    ``phi3lab.safety`` works after a plain ``import phi3lab``.
    """

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        if submodules and not name.startswith("_"):
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
