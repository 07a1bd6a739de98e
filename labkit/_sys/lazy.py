"""Lazy package attributes (PEP 562): a package names its public types without importing the modules that
define them, so ``labkit run`` imports only what it touches (docs/performance.md).

>>> ns = {"__all__": ["sep"]}
>>> getattr_, dir_ = attributes("os", {"sep": "path"}, ns)
>>> getattr_("sep") == __import__("os").path.sep and "sep" in ns and dir_() == ["__all__", "sep"]
True
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def attributes(package: str, where: dict[str, str], namespace: dict[str, Any]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__``: ``where`` maps a public name to the module of ``package``
    that defines it; the first lookup imports that module and keeps the value in ``namespace`` (the
    module's ``globals()``), so later lookups cost nothing."""
    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {namespace.get('__name__', package)!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return getattr_, dir_
