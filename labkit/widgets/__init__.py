"""ipywidgets panels: experiments, a thin device's blocks, a Lab's images and containers.

>>> from labkit.widgets import ExperimentPanel, BlockMap   # doctest: +SKIP
"""
from __future__ import annotations

from .block_map import BlockMap, block_matrix
from .experiment_panel import ExperimentPanel
from .lab_panels import ContainerPanel, ImageBrowser

__all__ = ["ExperimentPanel", "BlockMap", "block_matrix", "ImageBrowser", "ContainerPanel"]
