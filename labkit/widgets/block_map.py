"""``BlockMap``: a picture of a snapshot's blocks — unmapped, exclusive, or shared and with which snapshot —
redrawn on demand or every second while a container writes.

It works on any snapshotter with the :class:`~labkit.snapshots.capabilities.BlockMapped` ability (the
``thin`` backend): ``sn.block_map(key)`` says, per virtual block, which data block it maps and which other
snapshots map that block too. Each cell is one block of the snapshot's device, row by row (``width``
blocks a row, only as many rows as reach the last mapped block). Colours: light grey unmapped; the
snapshot's own colour for blocks only it maps; another snapshot's colour for blocks it shares with that
snapshot (the oldest other owner names the colour: usually the image it came from).

>>> from labkit.widgets import BlockMap
>>> bm = BlockMap(sn, "c1")        # sn: a thin snapshotter, "c1": a snapshot key   # doctest: +SKIP
>>> bm.watch(interval=1.0)         # redraw every second until bm.stop()            # doctest: +SKIP
"""
from __future__ import annotations

import threading
from typing import Any

import ipywidgets as w
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from .. import errors
from ..plots import LabFigure
from ..snapshots.capabilities import BlockMapped
from ._panel import Panel, error_html

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]

__all__ = ["BlockMap", "block_matrix"]


def block_matrix(sn: Any, key: str, *, width: int = 128) -> tuple[np.ndarray, dict[int, str], dict[str, int]]:
    """Cells for ``key``'s device: -1 unmapped, else the index of the owning snapshot in the legend
    (0: ``key`` itself, its exclusive blocks).

    Returns (matrix of ``width`` columns, legend index -> snapshot name, counts by state). The counts
    cover the blocks up to the last mapped one: ``unmapped`` are the holes before it.
    """
    if not isinstance(sn, BlockMapped):
        raise errors.Unsupported(f"BlockMap of {key!r} on the {getattr(sn, 'name', type(sn).__name__)} backend",
                                 "needs a backend that can map blocks (BlockMapped)",
                                 fix="use a thin store: open_snapshotter('thin', ...) or Lab(root, 'thin')")
    if width < 1:
        raise errors.InvalidArgument(f"width={width}", "must be at least 1")
    blocks = sn.block_map(key)
    legend_names = [key]
    counts = {"unmapped": 0, "exclusive": 0, "shared": 0}
    cells = np.full(max(1, -(-len(blocks) // width)) * width, -1, dtype=int)
    for b in blocks:
        counts[b.state] += 1
        if b.state == "exclusive":
            cells[b.virtual] = 0
        elif b.state == "shared":
            owner = b.shared_with[0]
            if owner not in legend_names:
                legend_names.append(owner)
            cells[b.virtual] = legend_names.index(owner)
    return cells.reshape(-1, width), dict(enumerate(legend_names)), counts


class BlockMap(Panel):
    """The block picture of snapshot ``key`` of a :class:`BlockMapped` snapshotter ``sn``.

    ``counts`` holds the last drawing's unmapped / exclusive / shared block counts; ``image.value`` its PNG.
    """

    def __init__(self, sn: Any, key: str, *, width: int = 128) -> None:
        self.sn, self.key, self.width = sn, key, width
        self.image = w.Image(format="png")
        self.status = w.HTML()
        self.counts: dict[str, int] = {}
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _b: self.guard(self.refresh))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        super().__init__([w.HBox([self.refresh_button, self.status]), self.image])
        self.refresh()

    def refresh(self) -> dict[str, int]:
        """Redraw now; returns the counts of unmapped / exclusive / shared blocks."""
        m, legend, counts = block_matrix(self.sn, self.key, width=self.width)
        colors = ["#e6e6e6"] + [PALETTE[i % len(PALETTE)] for i in range(len(legend))]
        fig = LabFigure(figsize=(8, max(1.2, 0.05 * m.shape[0] + 0.8)))
        ax = fig.subplots()
        ax.imshow(m + 1, cmap=ListedColormap(colors), vmin=0, vmax=len(colors) - 1, aspect="auto",
                  interpolation="nearest")
        ax.set(xlabel=f"block within row ({self.width} blocks a row)", ylabel="row", yticks=[],
               title=f"{self.key}: {counts['exclusive']} own, {counts['shared']} shared, {counts['unmapped']} unmapped")
        handles = [Patch(color=colors[0], label="unmapped")] + [
            Patch(color=colors[i + 1], label=("own (exclusive)" if i == 0 else f"shared with {n}"))
            for i, n in legend.items()]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        self.image.value = fig.png()
        self.counts = counts
        self.status.value = ", ".join(f"{k}: {v}" for k, v in counts.items())
        return counts

    def watch(self, interval: float = 1.0) -> None:
        """Redraw every ``interval`` seconds in a thread until :meth:`stop` (or until drawing fails: the
        snapshot was removed, the snapshotter closed — the status line says which)."""
        self.stop()
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception as e:  # noqa: BLE001 - shown in the panel; watching stops
                    self.status.value = "stopped watching: " + error_html(e)
                    return
        self._thread = threading.Thread(target=loop, daemon=True, name=f"BlockMap {self.key}")
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None
