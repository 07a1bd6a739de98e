"""``BlockMap``: a picture of a thin device's blocks — unmapped, exclusive, or shared and with which
device — redrawn on demand or every second while a container writes.

Each cell is one pool block of the device's virtual address space, row by row (``width`` blocks a row,
only as many rows as reach the last mapped block). Colours: light grey unmapped; the device's own colour
for blocks only it maps; another snapshot's colour for blocks it shares with that snapshot (the oldest
other owner names the colour: usually the image it came from).

>>> from labkit.widgets import BlockMap
>>> bm = BlockMap(sn, "c1")        # sn: a thin snapshotter, "c1": a snapshot key   # doctest: +SKIP
>>> bm.watch(interval=1.0)         # redraw every second until bm.stop()            # doctest: +SKIP
"""
from __future__ import annotations

import threading
from typing import Any

import ipywidgets as w
import numpy as np
from IPython.display import display

from .. import errors

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


def block_matrix(sn: Any, key: str, *, width: int = 128) -> tuple[np.ndarray, dict[int, str], dict[str, int]]:
    """Cells for ``key``'s device: -1 unmapped, else the index of the owning snapshot in the legend.

    Returns (matrix, legend index -> snapshot name, counts by state).
    """
    if getattr(sn, "name", None) != "thin":
        raise errors.Unsupported(f"BlockMap of {key!r}", "needs the thin backend", fix="open_snapshotter('thin', ...)")
    client = sn.client
    names = {i.name: sn._get(i.name).state.get("dev") for i in sn.walk()}
    dev = names.get(key)
    if dev is None:
        raise errors.NotFound(f"snapshot {key!r}")
    owners: dict[int, list[int]] = {}
    for other_name, other in names.items():
        for vb, db in client.call("mappings", other):
            owners.setdefault(db, []).append(other)
    by_dev = {d: n for n, d in names.items()}
    mine = client.call("mappings", dev)
    legend_devs = [dev]
    cells: dict[int, int] = {}
    counts = {"unmapped": 0, "exclusive": 0, "shared": 0}
    for vb, db in mine:
        others = sorted(set(owners.get(db, [])) - {dev})
        if not others:
            cells[vb] = 0
            counts["exclusive"] += 1
        else:
            owner = others[0]
            if owner not in legend_devs:
                legend_devs.append(owner)
            cells[vb] = legend_devs.index(owner)
            counts["shared"] += 1
    last = max(cells, default=-1)
    rows = max(1, -(-(last + 1) // width))
    m = np.full(rows * width, -1, dtype=int)
    for vb, c in cells.items():
        m[vb] = c
    size_blocks = -(-client.call("size", dev) // _block(sn))
    counts["unmapped"] = size_blocks - counts["exclusive"] - counts["shared"]
    legend = {i: by_dev.get(d, f"device {d}") for i, d in enumerate(legend_devs)}
    return m.reshape(rows, width), legend, counts


def _block(sn: Any) -> int:
    from ..units import parse_size
    return parse_size(sn.block_size)


class BlockMap(w.VBox):
    """The block picture of snapshot ``key`` of a thin snapshotter ``sn``."""

    def __init__(self, sn: Any, key: str, *, width: int = 128) -> None:
        self.sn, self.key, self.width = sn, key, width
        self.out = w.Output()
        self.caption = w.HTML()
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        super().__init__([w.HBox([self.refresh_button, self.caption]), self.out])
        self.refresh()

    def refresh(self) -> dict[str, int]:
        """Redraw now; returns the counts of unmapped / exclusive / shared blocks."""
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
        m, legend, counts = block_matrix(self.sn, self.key, width=self.width)
        colors = ["#e6e6e6"] + [PALETTE[i % len(PALETTE)] for i in range(len(legend))]
        fig, ax = plt.subplots(figsize=(8, max(1.2, 0.05 * m.shape[0] + 0.8)))
        ax.imshow(m + 1, cmap=ListedColormap(colors), vmin=0, vmax=len(colors) - 1, aspect="auto",
                  interpolation="nearest")
        ax.set(xlabel=f"block within row ({self.width} blocks a row)", ylabel="row", yticks=[],
               title=f"{self.key}: {counts['exclusive']} own, {counts['shared']} shared, {counts['unmapped']} unmapped")
        handles = [Patch(color=colors[0], label="unmapped")] + [
            Patch(color=colors[i + 1], label=("own (exclusive)" if i == 0 else f"shared with {n}"))
            for i, n in legend.items()]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        self.out.clear_output(wait=True)
        with self.out:
            display(fig)
        plt.close(fig)
        self.counts = counts
        self.caption.value = ", ".join(f"{k}: {v}" for k, v in counts.items())
        return counts

    def watch(self, interval: float = 1.0) -> None:
        """Redraw every ``interval`` seconds in a thread until :meth:`stop`."""
        self.stop()
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception as e:  # the snapshot went away: stop watching
                    self.caption.value = f"stopped: {e}"
                    return
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None
