"""labkit: teach, explore and measure how container images work.

>>> import labkit
>>> labkit.__version__ >= "0.1"
True
"""
from __future__ import annotations

from .version import __version__

__all__ = ["__version__", "Lab"]


def __getattr__(name: str):  # Lab is imported lazily: `import labkit` stays light for the CLI and the daemon
    if name == "Lab":
        from .lab import Lab
        return Lab
    raise AttributeError(name)
