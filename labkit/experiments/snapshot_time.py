"""Experiment ``snapshot-time``: how long each phase of a container's snapshot takes, against image size.

For each backend and parent size, a parent image is built once (files of realistic sizes, see
:mod:`labkit.experiments.fill`) and committed; then each repetition times, separately, the phases a
container goes through: ``prepare`` (the snapshot), ``mount``, ``first_write`` (a 4 KiB file, fsynced),
``unmount``, ``commit`` and ``remove``. Repetition 0 is a warm-up (``warmup=True``); medians should drop it.

Columns: ``backend, parent_bytes, files, phase, repeat, warmup, seconds`` plus the host columns of
:func:`labkit.experiments.environment`.

>>> df = run(["copy"], [1 << 20], repeat=1, root="/tmp/lk-bench")      # doctest: +SKIP
>>> df.groupby(["backend", "phase"]).seconds.median()                    # doctest: +SKIP
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Iterable

import pandas as pd

from ..snapshots import open_snapshotter
from ..units import format_size, parse_size
from . import environment
from .fill import fill_tree

PHASES = ("prepare", "mount", "first_write", "unmount", "commit", "remove")


def run(backends: Iterable[str], sizes: Iterable[int | str], *, repeat: int = 5, root: str,
        progress: bool = True, loop_size: int | str | None = None) -> pd.DataFrame:
    """Measure every phase for every backend and parent size; returns the tidy DataFrame.

    ``root`` is a scratch directory: each backend gets a fresh store under it, removed afterwards.
    ``loop_size`` sizes the loop-file filesystem of btrfs/reflink (default: 3 × the largest parent + 1 GiB).
    """
    backends = list(backends)
    sizes = [parse_size(s) for s in sizes]
    env = environment(root)
    rows = []
    total = len(backends) * len(sizes) * (repeat + 1)
    bar = _bar(total, progress)
    os.makedirs(root, exist_ok=True)
    for backend in backends:
        store = tempfile.mkdtemp(prefix=f"bench-{backend}-", dir=root)
        opts = {}
        if backend in ("btrfs", "reflink"):
            opts["loop_size"] = loop_size or 3 * max(sizes) + (1 << 30)
        sn = open_snapshotter(backend, store, **opts)
        target = os.path.join(store, "rootfs")
        os.mkdir(target)
        try:
            for size in sizes:
                parent = f"parent-{size}"
                with sn.prepare(parent + "-build").mount(target):
                    files = fill_tree(target, size, seed=size)
                sn.commit(parent, parent + "-build")
                os.sync()
                for r in range(repeat + 1):
                    bar.set_description(f"{backend} {format_size(size)}")
                    for phase, seconds in _trial(sn, parent, f"c{r}", target):
                        rows.append({"backend": backend, "parent_bytes": size, "files": files, "phase": phase,
                                     "repeat": r, "warmup": r == 0, "seconds": seconds,
                                     **{k: env[k] for k in ("kernel", "labkit_version", "cpu_model")},
                                     "store_fs": env["store_fs"]})
                    bar.update(1)
                sn.remove(parent)
        finally:
            sn.close()
            shutil.rmtree(store, ignore_errors=True)
    bar.close()
    return pd.DataFrame(rows)


def _trial(sn, parent: str, key: str, target: str) -> list[tuple[str, float]]:
    t = time.perf_counter
    out = []
    t0 = t()
    m = sn.prepare(key, parent)
    t1 = t()
    mounted = m.mount(target)
    t2 = t()
    try:
        fd = os.open(os.path.join(target, "first-write"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x" * 4096)
        os.fsync(fd)
        os.close(fd)
        t3 = t()
    finally:
        mounted.unmount()
    t4 = t()
    sn.commit(key + "-img", key)
    t5 = t()
    sn.remove(key + "-img")
    t6 = t()
    out += [("prepare", t1 - t0), ("mount", t2 - t1), ("first_write", t3 - t2), ("unmount", t4 - t3),
            ("commit", t5 - t4), ("remove", t6 - t5)]
    return out


def medians(df: pd.DataFrame) -> pd.DataFrame:
    """Median seconds of prepare+mount per backend (rows) and parent size (columns), warm-up dropped."""
    d = df[~df.warmup & df.phase.isin(["prepare", "mount"])]
    per_trial = d.groupby(["backend", "parent_bytes", "repeat"]).seconds.sum().reset_index()
    table = per_trial.groupby(["backend", "parent_bytes"]).seconds.median().unstack("parent_bytes")
    table.columns = [format_size(c) for c in table.columns]
    return table


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not enabled, unit="trial", leave=False)
