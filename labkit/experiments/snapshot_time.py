"""Experiment ``snapshot-time``: how long each phase of a container's snapshot takes, against image size.

For each backend and parent size, a parent image is built once (files of realistic sizes, see
:mod:`labkit.experiments.fill`) and committed; then each repetition times, separately, the phases a
container goes through: ``prepare`` (the snapshot), ``mount``, ``first_write`` (a 4 KiB file, fsynced),
``unmount``, ``commit`` and ``remove``. Repetition 0 is a warm-up (``warmup=True``); medians should drop it.

Columns: ``backend, parent_bytes, files, phase, repeat, warmup, seconds`` plus the host columns of
:func:`labkit.experiments.host.environment`.

>>> df = run(["copy"], [1 << 20], repeat=1, root="/tmp/lk-bench")      # doctest: +SKIP
>>> df.groupby(["backend", "phase"]).seconds.median()                    # doctest: +SKIP
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import pandas as pd

from ..snapshots import BaseSnapshotter
from ..units import format_size
from .common import backend_param, make_image, scratch_store
from .framework import Context, Param, experiment
from .framework import run as run_experiment

PHASES = ("prepare", "mount", "first_write", "unmount", "commit", "remove")


def run(backends: Iterable[str], sizes: Iterable[int | str], *, repeat: int = 5, root: str,
        progress: bool = True) -> pd.DataFrame:
    """Measure every phase for every backend and parent size (the ``snapshot-time`` experiment)."""
    return run_experiment("snapshot-time", repeat=repeat, root=root, progress=progress,
                          backend=list(backends), size=list(sizes))


def trial(sn: BaseSnapshotter, parent: str, key: str, target: str) -> list[tuple[str, float]]:
    """One container's snapshot lifecycle on ``parent``, each phase timed: [(phase, seconds), ...]."""
    t = time.perf_counter
    t0 = t()
    m = sn.prepare(key, parent)
    t1 = t()
    mounted = m.mount(target)
    t2 = t()
    try:
        fd = os.open(os.path.join(target, "first-write"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        t3 = t()
    finally:
        mounted.unmount()
    t4 = t()
    sn.commit(key + "-img", key)
    t5 = t()
    sn.remove(key + "-img")
    t6 = t()
    return [("prepare", t1 - t0), ("mount", t2 - t1), ("first_write", t3 - t2), ("unmount", t4 - t3),
            ("commit", t5 - t4), ("remove", t6 - t5)]


def medians(df: pd.DataFrame) -> pd.DataFrame:
    """Median seconds of prepare+mount per backend (rows) and parent size (columns), warm-up dropped."""
    d = df[~df.warmup & df.phase.isin(["prepare", "mount"])]
    per_trial = d.groupby(["backend", "parent_bytes", "repeat"]).seconds.sum().reset_index()
    table = per_trial.groupby(["backend", "parent_bytes"]).seconds.median().unstack("parent_bytes")
    table.columns = [format_size(int(c)) for c in table.columns]   # parent_bytes
    return table


@experiment("snapshot-time", title="time of each snapshot phase against image size",
            params=[backend_param(), Param("size", "size", ["16M", "256M", "1G"], "image size", sweep=True)],
            columns={"parent_bytes": "bytes of the image", "files": "files in the image",
                     "phase": "prepare, mount, first_write, unmount, commit, remove", "seconds": "wall time"},
            summary=medians)
def snapshot_time_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """One backend and size: an image, then ``repeat + 1`` timed container lifecycles on it."""
    rows = []
    with scratch_store(ctx, p["backend"], p["size"]) as (sn, target):
        files = make_image(sn, target, "image", p["size"], seed=p["size"])
        for r in range(repeat + 1):
            for phase, seconds in trial(sn, "image", f"c{r}", target):
                rows.append({"parent_bytes": p["size"], "files": files, "phase": phase, "repeat": r,
                             "seconds": seconds})
            ctx.tick(1)
    return rows
