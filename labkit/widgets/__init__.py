"""ipywidgets panels over experiments and the thin pool (ImageBrowser and ContainerPanel come with the Lab).

>>> from labkit.widgets import ExperimentPanel, BlockMap   # doctest: +SKIP
"""
from __future__ import annotations

from .block_map import BlockMap, block_matrix
from .experiment_panel import ExperimentPanel

__all__ = ["ExperimentPanel", "BlockMap", "block_matrix"]
