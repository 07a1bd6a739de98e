"""One standard figure per experiment: medians with their spread (25–75 %), units on every axis, log
axes where sizes span decades. Each function takes the experiment's DataFrame and returns a matplotlib
Figure; :func:`plot` picks the function by ``df.attrs["experiment"]`` (or a name).

Figures are made with matplotlib's object API, not pyplot: no global figure list, so they can be drawn in
a widget's background thread, and a notebook shows each once (as PNG: :meth:`LabFigure.png`).

>>> import pandas as pd
>>> from labkit.plots import PLOTS
>>> sorted(PLOTS)[:3]
['block-size', 'commit-cost', 'cow-penalty']
"""
from __future__ import annotations

import io
from typing import Any, Callable

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from . import errors
from .units import format_size

__all__ = ["LabFigure", "PLOTS", "plot", "png"]


class LabFigure(Figure):
    """A matplotlib Figure that renders itself as PNG (Agg) wherever it is shown or asked for bytes.

    >>> fig = LabFigure(figsize=(2, 1)); _ = fig.subplots().plot([0, 1])
    >>> fig.png()[:4]
    b'\\x89PNG'
    """

    def png(self, *, dpi: int = 100) -> bytes:
        """The figure as PNG bytes (for an ``ipywidgets.Image``, a file, a report)."""
        return png(self, dpi=dpi)

    def _repr_png_(self) -> bytes:  # IPython / Jupyter display
        return self.png()


def png(fig: Figure, *, dpi: int = 100) -> bytes:
    """Any matplotlib Figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kw: Any) -> tuple[LabFigure, Any]:
    """``plt.subplots`` without pyplot: a :class:`LabFigure` and its axes."""
    fig = LabFigure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


MiB = 1 << 20
_bytes_fmt = FuncFormatter(lambda x, _: format_size(x) if x > 0 else "0")


def _spread(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    d = df[~df.warmup] if "warmup" in df else df
    g = d.groupby(by)[value]
    return pd.DataFrame({"median": g.median(), "q1": g.quantile(0.25), "q3": g.quantile(0.75)}).reset_index()


def _lines(ax, s: pd.DataFrame, x: str, series: str) -> None:
    for name, part in s.groupby(series):
        part = part.sort_values(x)
        ax.errorbar(part[x], part["median"], yerr=[part["median"] - part["q1"], part["q3"] - part["median"]],
                    marker="o", capsize=3, label=str(name))
    ax.legend(title=series, fontsize="small")
    ax.grid(True, alpha=0.3)
    ax.set_xticks(sorted(s[x].unique()))  # tick at the measured sizes, not at powers of ten


def snapshot_time(df: pd.DataFrame) -> Figure:
    """prepare + mount time against image size, per backend (log–log)."""
    d = df[df.phase.isin(["prepare", "mount"])].groupby(["backend", "parent_bytes", "repeat", "warmup"]).seconds.sum()
    s = _spread(d.reset_index(), ["backend", "parent_bytes"], "seconds")
    fig, ax = _subplots(figsize=(6.4, 4.2))
    _lines(ax, s, "parent_bytes", "backend")
    ax.set(xscale="log", yscale="log", xlabel="image size", ylabel="prepare + mount (seconds)",
           title="Starting a container: snapshot time vs image size")
    ax.xaxis.set_major_formatter(_bytes_fmt)
    return fig


def space_vs_containers(df: pd.DataFrame) -> Figure:
    """Store bytes added against the number of containers, per backend."""
    s = _spread(df, ["backend", "containers"], "bytes_added")
    fig, ax = _subplots(figsize=(6.4, 4.2))
    _lines(ax, s, "containers", "backend")
    ax.set(xlabel="containers started from one image", ylabel="space added (bytes)",
           title="Space used as containers write")
    ax.yaxis.set_major_formatter(_bytes_fmt)
    return fig


def cow_penalty(df: pd.DataFrame) -> Figure:
    """First write into inherited data vs rewrite, by write size, per backend."""
    fig, axes = _subplots(1, 2, figsize=(9.6, 4.0), sharey=True)
    for ax, phase in zip(axes, ("first_write", "rewrite")):
        s = _spread(df[df.phase == phase], ["backend", "write_bytes"], "seconds")
        _lines(ax, s, "write_bytes", "backend")
        ax.set(xscale="log", yscale="log", xlabel="write size", title=phase.replace("_", " "))
        ax.xaxis.set_major_formatter(_bytes_fmt)
    axes[0].set_ylabel("pwrite + fsync (seconds)")
    fig.suptitle("Copy-on-write penalty: first write into an image's file vs a rewrite")
    return fig


def commit_cost(df: pd.DataFrame) -> Figure:
    """Commit time and bytes added against the amount changed."""
    fig, axes = _subplots(1, 2, figsize=(9.6, 4.0))
    _lines(axes[0], _spread(df, ["backend", "changed_bytes"], "seconds"), "changed_bytes", "backend")
    axes[0].set(xscale="log", yscale="log", xlabel="bytes changed", ylabel="commit (seconds)", title="commit time")
    _lines(axes[1], _spread(df, ["backend", "changed_bytes"], "bytes_added"), "changed_bytes", "backend")
    axes[1].set(xscale="log", yscale="log", xlabel="bytes changed", ylabel="bytes added", title="image size added")
    for ax in axes:
        ax.xaxis.set_major_formatter(_bytes_fmt)
    axes[1].yaxis.set_major_formatter(_bytes_fmt)
    return fig


def block_size(df: pd.DataFrame) -> Figure:
    """Thin block size against CoW cost, snapshot space and metadata."""
    d = df[~df.warmup].groupby("block_bytes")[["seconds_per_write", "bytes_exclusive", "metadata_blocks"]].median()
    fig, axes = _subplots(1, 3, figsize=(11, 3.6))
    labels = [format_size(b) for b in d.index]
    for ax, col, ylabel in zip(axes, d.columns, ("seconds per 4 KiB write", "snapshot's exclusive bytes",
                                                 "metadata blocks (4 KiB)")):
        ax.bar(labels, d[col])
        ax.set(xlabel="pool block size", ylabel=ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    axes[1].yaxis.set_major_formatter(_bytes_fmt)
    fig.suptitle("Thin pool block size: CoW cost vs space vs metadata")
    fig.tight_layout()
    return fig


def pool_exhaustion(df: pd.DataFrame) -> Figure:
    """Bytes each container wrote before the pool ran out, and whether the image survived."""
    d = df[~df.warmup]
    fig, ax = _subplots(figsize=(6.4, 4.0))
    for r, part in d.groupby("repeat"):
        ax.bar([f"r{r} c{c}" for c in part.container], part.bytes_written)
    intact = "image intact" if d.image_intact.all() else "IMAGE DAMAGED"
    ax.set(ylabel="bytes written before ENOSPC", xlabel="repetition / container",
           title=f"Over-committed pool filled until full ({intact})")
    ax.yaxis.set_major_formatter(_bytes_fmt)
    return fig


def thin_io(df: pd.DataFrame) -> Figure:
    """MiB/s per op, thin vs plain loop."""
    d = df[~df.warmup].groupby(["op", "target"]).mib_per_s.median().unstack("target")
    fig, ax = _subplots(figsize=(6.4, 4.0))
    d.plot.bar(ax=ax, rot=0)
    ax.set(ylabel="MiB/s (median)", xlabel="", yscale="log", title="Thin device (FUSE + loop) vs plain loop file")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def start_latency(df: pd.DataFrame) -> Figure:
    """Distribution of container start-to-exit per runtime."""
    d = df[~df.warmup] if "warmup" in df else df
    fig, ax = _subplots(figsize=(6.4, 4.0))
    names = sorted(d.runtime.unique())
    ax.boxplot([d[d.runtime == n].seconds * 1000 for n in names])
    ax.set_xticks(range(1, len(names) + 1), names)  # (boxplot's labels= was renamed in matplotlib 3.9)
    ax.set(ylabel="start to exit of /bin/true (ms)", title="Container start latency")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def image_sprawl(df: pd.DataFrame) -> Figure:
    """Bytes a chain of ad-hoc commits takes vs one commit, and what prune reclaimed, per backend."""
    d = df[~df.warmup].groupby(["backend", "approach"])[["bytes_total", "bytes_freed"]].median()
    fig, axes = _subplots(1, 2, figsize=(9.6, 3.8))
    d.bytes_total.unstack("approach").plot.bar(ax=axes[0], rot=0)
    axes[0].set(ylabel="bytes of the images' own layers", xlabel="", title="ad-hoc chain vs recorded once")
    d.bytes_freed.unstack("approach").plot.bar(ax=axes[1], rot=0)
    axes[1].set(ylabel="bytes freed by prune", xlabel="", title="what prune reclaims")
    for ax in axes:
        ax.yaxis.set_major_formatter(_bytes_fmt)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


PLOTS: dict[str, Callable[[pd.DataFrame], Figure]] = {
    "image-sprawl": image_sprawl,
    "snapshot-time": snapshot_time, "space-vs-containers": space_vs_containers, "cow-penalty": cow_penalty,
    "commit-cost": commit_cost, "block-size": block_size, "pool-exhaustion": pool_exhaustion,
    "thin-io": thin_io, "start-latency": start_latency,
}


def plot(df: pd.DataFrame, name: str | None = None) -> Figure:
    """The standard figure for an experiment's DataFrame."""
    name = name or df.attrs.get("experiment")
    if name not in PLOTS:
        raise errors.NotFound(f"plot for experiment {name!r}", fix=f"plots exist for {', '.join(PLOTS)}")
    return PLOTS[name](df)
