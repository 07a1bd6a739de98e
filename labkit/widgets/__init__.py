"""ipywidgets panels: experiments, a snapshot's blocks, a Lab's images and containers.

Every panel has a ``status`` line where the errors of its buttons appear, and shows its results by setting
widget values (so that a background thread's results reach the browser).

>>> from labkit.widgets import ExperimentPanel, BlockMap   # doctest: +SKIP
"""
from __future__ import annotations

from .block_map import BlockMap, block_matrix
from .experiment_panel import ExperimentPanel
from .lab_panels import ContainerPanel, ImageBrowser

__all__ = ["ExperimentPanel", "BlockMap", "block_matrix", "ImageBrowser", "ContainerPanel"]
