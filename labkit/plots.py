"""One standard figure per experiment, made to be read: medians with their spread (25–75 %), sizes ticked
at the sizes that were measured and labelled the way they were asked for (``1M`` is ``1 MiB``), times in
s / ms / µs, legends beside the data rather than over it, and a layout that does not overlap.

Each function takes the experiment's DataFrame and returns a :class:`LabFigure`; :func:`plot` picks the
function by ``df.attrs["experiment"]`` (or a name). Figures are made with matplotlib's object API, not
pyplot: no global figure list, so a widget's background thread may draw them, and a notebook shows each one
exactly once — the figure a cell returns is its only output (as PNG, :meth:`LabFigure.png`).

>>> from labkit.plots import PLOTS, format_seconds
>>> sorted(PLOTS)[:3]
['block-size', 'cli-latency', 'commit-cost']
>>> format_seconds(0.000719), format_seconds(0.0213), format_seconds(4.2)
('719 µs', '21.3 ms', '4.2 s')
"""
from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, Locator, LogLocator, MaxNLocator, NullFormatter, NullLocator

from . import errors
from .units import format_size

__all__ = ["LabFigure", "PLOTS", "plot", "png", "format_seconds", "human", "size_axis", "time_axis", "bytes_axis"]

#: one colour per backend / runtime / target, the same in every figure
COLORS = {"copy": "#d62728", "overlay": "#2ca02c", "btrfs": "#1f77b4", "reflink": "#9467bd", "thin": "#ff7f0e",
          "dmthin": "#8c564b", "labkit": "#ff7f0e", "runc": "#1f77b4", "crun": "#2ca02c", "loop": "#7f7f7f",
          "chain": "#d62728", "once": "#2ca02c", "hand": "#d62728", "recipe": "#2ca02c"}
_FALLBACK = ["#17becf", "#bcbd22", "#e377c2", "#8c564b", "#7f7f7f"]


def _color(name: Any, i: int = 0) -> str:
    return COLORS.get(str(name), _FALLBACK[i % len(_FALLBACK)])


class LabFigure(Figure):
    """A matplotlib Figure with constrained layout that renders itself as PNG (Agg) wherever it is shown.

    >>> fig = LabFigure(figsize=(2, 1)); _ = fig.subplots().plot([0, 1])
    >>> fig.png()[:4]
    b'\\x89PNG'
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("layout", "constrained")
        super().__init__(*args, **kw)

    def png(self, *, dpi: int = 100) -> bytes:
        """The figure as PNG bytes (for an ``ipywidgets.Image``, a file, a report)."""
        return png(self, dpi=dpi)

    def alt(self) -> str:
        """A text alternative for the image: the figure's title (or its axes' titles)."""
        # Figure.get_suptitle() would need matplotlib 3.8; the dependency allows 3.7
        suptitle = self._suptitle  # type: ignore[attr-defined]
        title = suptitle.get_text() if suptitle is not None else ""
        return title or "; ".join(t for t in (ax.get_title() for ax in self.axes) if t) or "figure"

    def _repr_png_(self) -> tuple[bytes, dict[str, str]]:  # Jupyter: the one representation, with alt text
        return self.png(), {"alt": self.alt()}


def png(fig: Figure, *, dpi: int = 100) -> bytes:
    """Any matplotlib Figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kw: Any) -> tuple[LabFigure, Any]:
    """``plt.subplots`` without pyplot: a :class:`LabFigure` and its axes."""
    fig = LabFigure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


# ---- units on axes ----------------------------------------------------------------------------------------

def format_seconds(s: float) -> str:
    """Seconds with the unit people read: ``'4.2 s'``, ``'21.3 ms'``, ``'719 µs'``, three significant digits."""
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "–"
    if s == 0:
        return "0 s"
    units = ((1e-9, "ns"), (1e-6, "µs"), (1e-3, "ms"), (1.0, "s"))
    a = abs(s)
    i = 3 if a >= 1 else 2 if a >= 1e-3 else 1 if a >= 1e-6 else 0
    text = _sig(s / units[i][0])
    if i < 3 and abs(float(text)) >= 1000:      # 999.96 ms rounds to 1000 ms: say 1 s
        i += 1
        text = _sig(s / units[i][0])
    return f"{text} {units[i][1]}"


def _sig(v: float, digits: int = 3) -> str:
    """``v`` with ``digits`` significant digits and no exponent: 21.3, 719, 4.2, 1500."""
    if v == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    text = f"{v:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


_seconds_fmt = FuncFormatter(lambda x, _: format_seconds(x) if x > 0 else "0")
_bytes_fmt = FuncFormatter(lambda x, _: format_size(x) if x > 0 else "0")


class BinaryLocator(Locator):
    """Ticks at multiples of a power of two (1, 2, 4, 8 ... MiB), about ``n`` of them on a linear axis."""

    def __init__(self, n: int = 5) -> None:
        self.n = n

    def __call__(self) -> list[float]:
        assert self.axis is not None, "matplotlib calls a locator once it is set on an axis"
        lo, hi = self.axis.get_view_interval()
        return self.tick_values(lo, hi)

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        lo, hi = min(vmin, vmax), max(vmin, vmax)
        span = hi - lo
        if span <= 0:
            return [lo]
        step = 2.0 ** math.ceil(math.log2(span / self.n)) if span >= 2 * self.n else 1.0
        return list(np.arange(math.ceil(lo / step) * step, hi + step * 1e-9, step))


def _set_scale(axis: Any, scale: str, **kw: Any) -> None:
    ax = axis.axes
    (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)(scale, **kw)


def size_axis(axis: Any, values: Iterable[float], *, log: bool | None = None) -> None:
    """An axis of sizes ticked exactly at ``values`` (the sizes measured) with binary labels; log scale
    (base 2) when they span more than a factor of 8. No minor ticks, so no ``3×10⁷`` labels."""
    vals = sorted({float(v) for v in values if v and v > 0})
    if log is None:
        log = len(vals) > 1 and vals[-1] / vals[0] > 8
    if log:
        _set_scale(axis, "log", base=2)
    axis.set_major_locator(FixedLocator(vals))
    axis.set_major_formatter(_bytes_fmt)
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())
    if log and len(vals) > 1:   # a margin so that the end points are not on the frame
        ax = axis.axes
        (ax.set_xlim if axis is ax.xaxis else ax.set_ylim)(vals[0] / 1.5, vals[-1] * 1.5)


def bytes_axis(axis: Any, *, log: bool = False) -> None:
    """An axis of bytes: ticks at powers of two (log) or multiples of one (linear), labels like ``4 MiB``."""
    if log:
        _set_scale(axis, "log", base=2)
        axis.set_major_locator(LogLocator(base=4, numticks=7))
        axis.set_minor_locator(NullLocator())
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_locator(BinaryLocator())
    axis.set_major_formatter(_bytes_fmt)


def time_axis(axis: Any, *, log: bool = True) -> None:
    """An axis of seconds labelled ``10 ms``, ``500 µs``; on a log scale majors at 1, 2, 5 × 10ⁿ and
    unlabelled minors."""
    if log:
        _set_scale(axis, "log")
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
        axis.set_minor_locator(NullLocator())
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_locator(MaxNLocator(6, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(_seconds_fmt)


def _legend(fig: Figure, axes: Any, title: str) -> None:
    """One legend for the figure, outside the axes on the right: it never covers data."""
    seen: dict[str, Any] = {}
    for ax in np.atleast_1d(axes):
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), title=title, loc="outside right upper", fontsize="small")


# ---- the figures ------------------------------------------------------------------------------------------

def _spread(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    d = df[~df.warmup] if "warmup" in df else df
    g = d.groupby(by)[value]
    return pd.DataFrame({"median": g.median(), "q1": g.quantile(0.25), "q3": g.quantile(0.75)}).reset_index()


_MARKERS = "osD^vP*X"


def _lines(ax: Any, s: pd.DataFrame, x: str, series: str) -> None:
    """One line per series with its 25–75 % spread; markers differ in shape and shrink from one series to
    the next, so that series with equal values stay visible one inside the other."""
    groups = list(s.groupby(series))
    for i, (name, part) in enumerate(groups):
        part = part.sort_values(x)
        ax.errorbar(part[x], part["median"], yerr=[part["median"] - part["q1"], part["q3"] - part["median"]],
                    marker=_MARKERS[i % len(_MARKERS)], markersize=4 + 2 * (len(groups) - i), markerfacecolor="none",
                    markeredgewidth=1.5, capsize=3, label=str(name), color=_color(name, i))
    ax.grid(True, alpha=0.3)


def snapshot_time(df: pd.DataFrame) -> LabFigure:
    """prepare + mount time against image size, per backend (log–log, ticks at the measured sizes)."""
    d = df[df.phase.isin(["prepare", "mount"])].groupby(["backend", "parent_bytes", "repeat", "warmup"]).seconds.sum()
    s = _spread(d.reset_index(), ["backend", "parent_bytes"], "seconds")
    fig, ax = _subplots(figsize=(7.2, 4.2))
    _lines(ax, s, "parent_bytes", "backend")
    size_axis(ax.xaxis, s.parent_bytes, log=True)
    time_axis(ax.yaxis)
    ax.set(xlabel="image size", ylabel="prepare + mount (median)",
           title="Starting a container: snapshot time vs image size")
    _legend(fig, ax, "backend")
    return fig


def space_vs_containers(df: pd.DataFrame) -> LabFigure:
    """Store bytes added against the number of containers, per backend."""
    s = _spread(df, ["backend", "containers"], "bytes_added")
    fig, ax = _subplots(figsize=(7.2, 4.2))
    _lines(ax, s, "containers", "backend")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    bytes_axis(ax.yaxis)
    write = df["write"].iloc[0] if "write" in df else None
    ax.set(xlabel="containers started from one image" + (f", each writing {format_size(write)}" if write else ""),
           ylabel="space added to the store", title="Space used as containers write")
    _legend(fig, ax, "backend")
    return fig


def cow_penalty(df: pd.DataFrame) -> LabFigure:
    """First write into inherited data vs rewrite, by write size, per backend."""
    fig, axes = _subplots(1, 2, figsize=(10.4, 4.0), sharey=True)
    for ax, phase, title in zip(axes, ("first_write", "rewrite"),
                                ("first write (breaks sharing)", "rewrite (already private)")):
        s = _spread(df[df.phase == phase], ["backend", "write_bytes"], "seconds")
        _lines(ax, s, "write_bytes", "backend")
        size_axis(ax.xaxis, s.write_bytes)
        ax.set(xlabel="write size", title=title)
    time_axis(axes[0].yaxis)
    axes[0].set_ylabel("pwrite + fsync (median)")
    size = df["file_size"].iloc[0] if "file_size" in df else None
    fig.suptitle("Copy-on-write penalty: first write into an image's file vs a rewrite"
                 + (f" (a {format_size(size)} file)" if size else ""))
    _legend(fig, axes, "backend")
    return fig


def commit_cost(df: pd.DataFrame) -> LabFigure:
    """Commit time (left) and the bytes the new image adds (right) against the amount changed."""
    fig, axes = _subplots(1, 2, figsize=(10.4, 4.0))
    left, right = axes
    t = _spread(df, ["backend", "changed_bytes"], "seconds")
    _lines(left, t, "changed_bytes", "backend")
    time_axis(left.yaxis)
    left.set(xlabel="bytes the container changed", ylabel="commit time (median)", title="commit time")
    b = _spread(df, ["backend", "changed_bytes"], "bytes_added")
    _lines(right, b, "changed_bytes", "backend")
    sizes = sorted(b.changed_bytes.unique())
    right.plot(sizes, sizes, linestyle="--", color="#999999", label="= bytes changed", zorder=0)
    bytes_axis(right.yaxis, log=True)
    right.yaxis.set_label_position("right")
    right.yaxis.tick_right()
    right.set(xlabel="bytes the container changed", ylabel="bytes the new image adds", title="image size added")
    for ax in axes:
        size_axis(ax.xaxis, sizes)
    _legend(fig, axes, "backend")
    return fig


def _bar_labels(ax: Any, bars: Any, fmt: Callable[[float], str]) -> None:
    ax.bar_label(bars, labels=[fmt(b.get_height()) for b in bars], padding=2, fontsize="small")
    ax.margins(y=0.15)


def block_size(df: pd.DataFrame) -> LabFigure:
    """Thin block size against CoW cost, snapshot space and metadata (values written on the bars)."""
    d = df[~df.warmup].groupby("block_bytes")[["seconds_per_write", "bytes_exclusive", "metadata_blocks"]].median()
    fig, axes = _subplots(1, 3, figsize=(11.5, 3.8))
    labels = [format_size(b) for b in d.index]
    writes = int(df["writes"].iloc[0]) if "writes" in df else None
    specs = (("seconds_per_write", "time of one 4 KiB write", format_seconds, time_axis),
             ("bytes_exclusive", "bytes the snapshot owns", format_size, bytes_axis),
             ("metadata_blocks", "metadata blocks (4 KiB each)", lambda v: f"{v:.0f}", None))
    for ax, (col, ylabel, fmt, axis_fn) in zip(axes, specs):
        bars = ax.bar(labels, d[col], color="#ff7f0e")
        if axis_fn is time_axis:
            time_axis(ax.yaxis, log=False)
        elif axis_fn is bytes_axis:
            bytes_axis(ax.yaxis)
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        _bar_labels(ax, bars, fmt)
        ax.set(xlabel="pool block size", ylabel=ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Thin pool block size: copy-on-write cost vs space vs metadata"
                 + (f" ({writes} scattered 4 KiB writes into a snapshot)" if writes else ""))
    return fig


def pool_exhaustion(df: pd.DataFrame) -> LabFigure:
    """What the containers of each repetition wrote before the pool was full, stacked, against the pool."""
    d = df[~df.warmup] if (~df.warmup).any() else df
    fig, ax = _subplots(figsize=(7.2, 4.0))
    reps = sorted(d.repeat.unique())
    bottom = np.zeros(len(reps))
    for c in sorted(d.container.unique()):
        vals = np.array([d[(d.repeat == r) & (d.container == c)].bytes_written.sum() for r in reps], dtype=float)
        ax.bar([f"run {r}" for r in reps], vals, bottom=bottom, label=f"container {c}", color=_FALLBACK[c % 5]
               if c >= 3 else ["#1f77b4", "#ff7f0e", "#2ca02c"][c])
        bottom += vals
    if "pool_size" in d:
        ax.axhline(float(d.pool_size.iloc[0]), color="#d62728", linestyle="--", label="pool data size")
    bytes_axis(ax.yaxis)
    intact = "image intact" if d.image_intact.all() else "IMAGE DAMAGED"
    over = f"{d.overcommit.iloc[0]:.0f}× over-committed" if "overcommit" in d else "over-committed"
    ax.set(ylabel="bytes written before the error", xlabel="",
           title=f"A {over} pool written until full ({intact})")
    ax.grid(True, axis="y", alpha=0.3)
    _legend(fig, ax, "")
    return fig


def thin_io(df: pd.DataFrame) -> LabFigure:
    """MiB/s per operation, thin device vs plain loop file (values on the bars)."""
    d = df[~df.warmup].groupby(["op", "target"]).mib_per_s.median().unstack("target")
    ops = [o for o in ("seq_write", "seq_read", "rand_write_4k") if o in d.index] + \
          [o for o in d.index if o not in ("seq_write", "seq_read", "rand_write_4k")]
    d = d.loc[ops]
    fig, ax = _subplots(figsize=(7.2, 4.0))
    width = 0.8 / max(1, len(d.columns))
    x = np.arange(len(d.index))
    for i, target in enumerate(d.columns):
        bars = ax.bar(x + (i - (len(d.columns) - 1) / 2) * width, d[target], width, label=str(target),
                      color=_color(target, i))
        _bar_labels(ax, bars, lambda v: f"{v:.0f}")
    ax.set_xticks(x, [o.replace("_", " ") for o in d.index])
    ax.set(ylabel="MiB/s (median)", xlabel="", title="Thin device (FUSE + loop) vs a plain loop file")
    ax.grid(True, axis="y", alpha=0.3)
    _legend(fig, ax, "target")
    return fig


def start_latency(df: pd.DataFrame) -> LabFigure:
    """Distribution of container start-to-exit per runtime."""
    d = df[~df.warmup] if "warmup" in df else df
    d = d[d.seconds.notna()]
    fig, ax = _subplots(figsize=(6.4, 4.0))
    names = sorted(d.runtime.unique())
    ax.boxplot([d[d.runtime == n].seconds for n in names])
    ax.set_xticks(range(1, len(names) + 1), names)  # (boxplot's labels= was renamed in matplotlib 3.9)
    time_axis(ax.yaxis, log=False)
    ax.set_ylim(bottom=0)
    ax.set(ylabel="start to exit of /bin/true", title="Container start latency")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def image_sprawl(df: pd.DataFrame) -> LabFigure:
    """Bytes a chain of ad-hoc commits takes vs one commit, and what prune reclaimed, per backend."""
    d = df[~df.warmup].groupby(["backend", "approach"])[["bytes_total", "bytes_freed"]].median()
    fig, axes = _subplots(1, 2, figsize=(10.4, 3.9))
    backends = sorted(d.index.get_level_values("backend").unique())
    x = np.arange(len(backends))
    panels = ((axes[0], "bytes_total", "ad-hoc chain vs recorded once", "the result's size above the base"),
              (axes[1], "bytes_freed", "what rmi + prune reclaim", "bytes freed"))
    for ax, col, title, ylabel in panels:
        for i, approach in enumerate(("chain", "once")):
            vals = [float(d[col].get((b, approach), 0)) for b in backends]
            bars = ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, label=approach, color=_color(approach))
            _bar_labels(ax, bars, format_size)
        ax.set_xticks(x, backends)
        bytes_axis(ax.yaxis)
        ax.set(title=title, ylabel=ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    steps = int(df["steps"].iloc[0]) if "steps" in df else None
    write = df["write"].iloc[0] if "write" in df else None
    if steps and write:
        fig.suptitle(f"{steps} ad-hoc commits, each rewriting one {format_size(write)} file")
    _legend(fig, axes, "approach")
    return fig


def cli_latency(df: pd.DataFrame) -> LabFigure:
    """Distribution of a whole command's start to exit per peer (``labkit run`` vs podman, runc)."""
    d = df[~df.warmup] if "warmup" in df else df
    d = d[d.seconds.notna()]
    fig, ax = _subplots(figsize=(6.4, 4.0))
    names = sorted(d.peer.unique())
    ax.boxplot([d[d.peer == n].seconds for n in names])
    ax.set_xticks(range(1, len(names) + 1), names)
    time_axis(ax.yaxis, log=False)
    ax.set_ylim(bottom=0)
    ax.set(ylabel="whole command, start to exit", title="`run --rm busybox true` as a command")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def kernel_diff(df: pd.DataFrame) -> LabFigure:
    """Per quantity compared with the kernel's dm-thin: matches, explained differences, unexplained ones."""
    match = df.match.astype(bool)
    explained = df.explained.fillna("").astype(str) != "" if "explained" in df else pd.Series(False, index=df.index)
    counts = pd.DataFrame({"equal": match, "explained difference": ~match & explained,
                           "unexplained difference": ~match & ~explained}).groupby(df.quantity).sum()
    fig, ax = _subplots(figsize=(7.2, 0.9 + 0.35 * max(3, len(counts))))
    left = np.zeros(len(counts))
    for col, color in (("equal", "#2ca02c"), ("explained difference", "#ff7f0e"),
                       ("unexplained difference", "#d62728")):
        ax.barh(counts.index, counts[col], left=left, label=col, color=color)
        left += counts[col].to_numpy()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="comparisons", title="labkit's thin pool vs the kernel's dm-thin")
    ax.grid(True, axis="x", alpha=0.3)
    _legend(fig, ax, "")
    return fig


def minimal_image(df: pd.DataFrame) -> LabFigure:
    """One application three ways: the image's size (left) and the time a run takes (right), per way."""
    d = df[~df.warmup] if "warmup" in df else df
    by = [c for c in ("app", "way") if c in d]
    m = d.groupby(by)[[c for c in ("bytes_total", "run_seconds") if c in d]].median()
    apps, ways = list(dict.fromkeys(d.app)), list(dict.fromkeys(d.way))      # in the order measured
    fig, axes = _subplots(1, 2, figsize=(10.4, 3.9))
    x = np.arange(len(apps))
    width = 0.8 / max(1, len(ways))
    for ax, col, label, fmt in ((axes[0], "bytes_total", "image size with its parents", format_size),
                                (axes[1], "run_seconds", "run until exit", format_seconds)):
        if col not in m:
            continue
        for i, way in enumerate(ways):
            vals = [float(m[col].get((a, way), np.nan)) for a in apps]
            bars = ax.bar(x + (i - (len(ways) - 1) / 2) * width, vals, width, label=way, color=_FALLBACK[i % 5])
            _bar_labels(ax, bars, fmt)
        ax.set_xticks(x, apps)
        if col == "bytes_total":
            spread = m[col].max() / max(1.0, m[col].min())
            bytes_axis(ax.yaxis, log=spread > 20)                    # 2 MiB next to 300 MiB: both readable
        else:
            time_axis(ax.yaxis, log=False)
        ax.set(ylabel=label)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("One application three ways")
    _legend(fig, axes, "way")
    return fig


def recipe_vs_hand(df: pd.DataFrame) -> LabFigure:
    """One application by hand and by a recipe, a row of panels per change (and backend): the phase's time,
    the steps that ran, the images in the result's lineage and the space the store gained."""
    phases = ("first build", "after change", "after prune")
    panels = (("seconds", "time of the phase", format_seconds, phases[:2]),
              ("steps_run", "steps that ran", "{:.0f}".format, phases[:2]),
              ("chain_depth", "images in the lineage", "{:.0f}".format, phases),
              ("bytes_added", "space the store gained", format_size, phases))
    d = df[~df.warmup] if "warmup" in df else df
    keys = [k for k in ("backend", "change") if k in d]
    m = d.groupby(keys + ["method", "phase"])[[p[0] for p in panels]].median()
    rows = list(dict.fromkeys(d[keys].itertuples(index=False, name=None)))
    fig, axes = _subplots(len(rows), len(panels), figsize=(13.5, 1.0 + 3.0 * len(rows)), squeeze=False)
    for row_axes, key in zip(axes, rows):
        for ax, (col, title, fmt, shown) in zip(row_axes, panels):
            x = np.arange(len(shown))
            for i, method in enumerate(("hand", "recipe")):
                vals = [float(m[col].get((*key, method, ph), np.nan)) for ph in shown]
                bars = ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, label=method, color=_color(method))
                ax.bar_label(bars, labels=[fmt(v) for v in vals], padding=2, fontsize=7)
            ax.set_xticks(x, [ph.replace(" ", "\n", 1) for ph in shown])
            ax.margins(y=0.2)
            if col == "seconds":
                time_axis(ax.yaxis, log=False)
            elif col == "bytes_added":
                bytes_axis(ax.yaxis)
            else:
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{title}\n{', '.join(map(str, key))}", fontsize="medium")
            ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("One application by hand and by a recipe")
    _legend(fig, axes.ravel(), "method")
    return fig


PLOTS: dict[str, Callable[[pd.DataFrame], LabFigure]] = {
    "snapshot-time": snapshot_time, "space-vs-containers": space_vs_containers, "cow-penalty": cow_penalty,
    "commit-cost": commit_cost, "block-size": block_size, "pool-exhaustion": pool_exhaustion,
    "thin-io": thin_io, "start-latency": start_latency, "image-sprawl": image_sprawl,
    "cli-latency": cli_latency, "kernel-diff": kernel_diff, "minimal-image": minimal_image,
    "recipe-vs-hand": recipe_vs_hand,
}


def plot(df: pd.DataFrame, name: str | None = None) -> LabFigure:
    """The standard figure for an experiment's DataFrame (shown once when a cell returns it)."""
    name = name or df.attrs.get("experiment")
    if name not in PLOTS:
        raise errors.NotFound(f"plot for experiment {name!r}", fix=f"plots exist for {', '.join(PLOTS)}")
    return PLOTS[name](df)


# ---- tables people read -------------------------------------------------------------------------------------

_SIZE_COLUMNS = ("size", "exclusive", "shared", "total", "reclaimable", "freed", "memory", "bytes")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and not pd.isna(v)


def _size_or_dash(v: Any) -> Any:
    if _number(v):
        return format_size(v)
    return "–" if v is None or (isinstance(v, float) and pd.isna(v)) else v


def _when(v: Any) -> Any:
    """A time (epoch seconds or a timestamp) as ``YYYY-MM-DD HH:MM:SS`` local time."""
    if _number(v):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v))
    if isinstance(v, pd.Timestamp) and not pd.isna(v):
        return (v.to_pydatetime().astimezone() if v.tzinfo else v).strftime("%Y-%m-%d %H:%M:%S")
    return v


def human(df: pd.DataFrame, *, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """A copy of ``df`` for reading: byte counts as ``4 MiB``, seconds as ``21 ms``, ``created`` times as
    dates, ids cut to 12 characters, tuples joined — keep the original for arithmetic.

    Columns are recognised by name (``size``, ``exclusive``, ``*_bytes``, ``freed_bytes``, ``memory_bytes``,
    ``seconds``, ``cpu_usage_ns``, ``created``, ``id``); ``columns`` picks and orders them first.

    >>> human(pd.DataFrame({"id": ["c0ffee" * 8], "size": [1 << 20], "seconds": [0.0213], "tags": [("a", "b")]}))
                 id   size  seconds  tags
    0  c0ffeec0ffee  1 MiB  21.3 ms  a, b
    """
    out = df[list(columns)].copy() if columns is not None else df.copy()
    for col in out.columns:
        name = str(col).lower()
        s = out[col]
        if name == "id" or (name.endswith("_id") and name != "short_id"):
            out[col] = s.map(lambda v: v[:12] if isinstance(v, str) else v)
        elif name == "created" or pd.api.types.is_datetime64_any_dtype(s):
            out[col] = s.map(_when)
        elif name.endswith("_ns"):
            out[col] = s.map(lambda v: format_seconds(v / 1e9) if _number(v) else "–")
        elif "seconds" in name:
            out[col] = s.map(lambda v: format_seconds(v) if _number(v) else "–")
        elif any(k in name for k in _SIZE_COLUMNS) and s.dtype != bool:
            out[col] = s.map(_size_or_dash)
        elif s.dtype.kind == "f" and s.dropna().map(float.is_integer).all():   # counts that NaN made floats
            out[col] = s.map(lambda v: "–" if pd.isna(v) else str(int(v)))
        elif s.dtype == object:
            out[col] = s.map(lambda v: ", ".join(map(str, v)) if isinstance(v, (tuple, list)) else
                             ("–" if v is None else v))
    return out
