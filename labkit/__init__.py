"""labkit: teach, explore and measure how container images work.

>>> import labkit
>>> labkit.__version__ >= "0.1"
True
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
