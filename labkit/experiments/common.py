"""Helpers the experiments share: a scratch store per case, images of a given size, file writes, digests.

Nothing here knows a backend by name: a store's options come from the backend's own
``options_for(largest_image_bytes)`` and its space from ``store_space()`` (see
:mod:`labkit.snapshots.capabilities`).

>>> store_options("copy", 1 << 30)
{}
>>> store_options("thin", 1 << 20)["data_size"] >= 1 << 30
True
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

from ..snapshots import BaseSnapshotter, backend_class, backend_names, open_snapshotter
from .fill import fill_tree
from .framework import Context, Param

#: backends an experiment may compare (dmthin needs the kernel's device-mapper: not swept by default)
BACKENDS = tuple(b for b in backend_names() if b != "dmthin")
MIB = 1 << 20

__all__ = ["BACKENDS", "MIB", "backend_param", "backend_class", "store_options", "scratch_store", "discard_store",
           "make_image", "write_file", "digest", "median_table"]


def backend_param(default: Any = ("copy", "overlay", "btrfs", "reflink", "thin")) -> Param:
    """The ``backend`` parameter (a list: one case per backend)."""
    return Param("backend", "choice", list(default), "snapshot backends to compare", choices=BACKENDS, sweep=True)


def store_options(backend: str, largest: int) -> dict[str, Any]:
    """Store options big enough for images of up to ``largest`` bytes: the backend's own ``options_for``."""
    return backend_class(backend).options_for(largest)


@contextmanager
def scratch_store(ctx: Context, backend: str, largest: int, **extra: Any) -> Iterator[tuple[BaseSnapshotter, str]]:
    """A fresh store for one case and a mount target under ``ctx.root``; everything is removed afterwards.

    ``largest`` is the biggest image the case will make (it sizes a loop file or a pool); ``extra``
    overrides the backend's options.
    """
    base = tempfile.mkdtemp(prefix=f"{backend}-", dir=ctx.root)
    try:
        sn = open_snapshotter(backend, os.path.join(base, "store"), **{**store_options(backend, largest), **extra})
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    target = os.path.join(base, "rootfs")
    os.mkdir(target)
    try:
        yield sn, target
    finally:
        discard_store(sn, base)


def discard_store(sn: BaseSnapshotter, base: str) -> None:
    """Remove every snapshot (children first: walk is oldest first), close, delete the scratch dir."""
    try:
        for info in reversed(list(sn.walk())):
            sn.remove(info.name)
    finally:
        sn.close()
        shutil.rmtree(base, ignore_errors=True)


def make_image(sn: BaseSnapshotter, target: str, name: str, size: int, *, seed: int = 0,
               one_file: bool = False) -> int:
    """Commit an image ``name`` of ``size`` bytes (realistic files, or one big file ``/big``); returns the
    number of files."""
    with sn.prepare(name + "-build").mount(target):
        if one_file:
            write_file(os.path.join(target, "big"), size, seed)
            files = 1
        else:
            files = fill_tree(target, size, seed=seed)
    sn.commit(name, name + "-build")
    os.sync()
    return files


def write_file(path: str, size: int, seed: int) -> None:
    """Write ``size`` pseudo-random bytes (1 MiB pattern from ``seed``) to ``path`` and fsync."""
    block = random.Random(seed).randbytes(MIB)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, MIB)])
            left -= MIB
        os.fsync(f.fileno())


def digest(path: str) -> str:
    """SHA-256 over the names and contents of every file under ``path`` (sorted walk)."""
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(name.encode())
                h.update(f.read())
    return h.hexdigest()


def median_table(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Medians of ``value`` (warm-up dropped) by ``by``; the last of ``by`` becomes the columns."""
    d = df[~df.warmup]
    if len(by) > 1:
        return d.groupby(by)[value].median().unstack(by[-1])
    return d.groupby(by)[value].median().to_frame()
