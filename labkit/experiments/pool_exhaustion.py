"""Experiment ``pool-exhaustion``: over-committed thin devices written until the pool is full.

A small pool (``pool_size``) holds an image and ``containers`` thin snapshots of it, each promising a
1 GiB device; they write 1 MiB at a time, in turn, until each sees an error. Afterwards the image's
contents are compared with a digest taken before, and the pool's metadata is checked. The store is a
``thin`` one — the experiment is about a thin pool — and everything it reads of the pool goes through the
:class:`~labkit.snapshots.capabilities.PoolBacked` ability.

Columns: ``container``, ``bytes_written`` (before the error), ``error``, ``image_intact``,
``pool_ok_after`` (the pool's check is clean), ``pool_used_bytes``, ``overcommit``.
"""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any

from .. import errors
from ..snapshots import open_snapshotter
from ..snapshots.capabilities import PoolBacked
from .common import MIB, digest, discard_store, make_image
from .framework import Context, Param, experiment

BACKEND = "thin"
DEVICE_BYTES = 1 << 30  # each container's (virtual) device


@experiment("pool-exhaustion", title="over-committed thin devices filled until ENOSPC; the image stays intact",
            params=[Param("pool_size", "size", "192M", "thin pool data size"),
                    Param("containers", "int", 3, "containers writing at once", min=1, max=20),
                    Param("image_size", "size", "16M", "image size")],
            columns={"container": "which container", "bytes_written": "bytes it wrote before the error",
                     "error": "what the writer saw", "image_intact": "image checksum unchanged afterwards",
                     "pool_used_bytes": "pool data in use at the end", "overcommit": "sum of virtual sizes / pool"},
            summary=lambda df: df[~df.warmup].groupby("repeat").agg(
                bytes_written=("bytes_written", "sum"), image_intact=("image_intact", "all"),
                pool_ok_after=("pool_ok_after", "all")))
def exhaustion_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """Per repetition a fresh small pool, filled by every container until each sees an error."""
    rows = []
    for r in range(repeat + 1):
        base = tempfile.mkdtemp(prefix="exhaust-", dir=ctx.root)
        sn = open_snapshotter(BACKEND, os.path.join(base, "store"), data_size=p["pool_size"], base_size=DEVICE_BYTES)
        try:
            if not isinstance(sn, PoolBacked):
                raise errors.Unsupported(f"pool-exhaustion on the {sn.name} backend", "needs a pool-backed store")
            rows += _fill(sn, base, p, r)
        finally:
            discard_store(sn, base)
        ctx.tick(1)
    return rows


def _fill(sn: Any, base: str, p: dict[str, Any], r: int) -> list[dict[str, Any]]:
    target = os.path.join(base, "img")
    os.mkdir(target)
    make_image(sn, target, "image", p["image_size"], seed=5)
    with sn.view("check", "image").mount(target):
        before = digest(target)
    sn.remove("check")
    n = p["containers"]
    handles, files, written, error = [], [], [0] * n, [""] * n
    try:
        for i in range(n):
            t = os.path.join(base, f"c{i}")
            os.mkdir(t)
            handles.append(sn.prepare(f"c{i}", "image").mount(t))
            files.append(open(os.path.join(t, "fill"), "wb"))
        block = random.Random(r).randbytes(MIB)
        live = set(range(n))
        while live:
            for i in sorted(live):
                try:
                    files[i].write(block)
                    files[i].flush()
                    os.fsync(files[i].fileno())
                    written[i] += MIB
                except OSError as e:
                    error[i] = os.strerror(e.errno) if e.errno else str(e)
                    live.discard(i)
                if written[i] > 4 * p["pool_size"]:
                    live.discard(i)
    finally:
        for f in files:
            try:
                f.close()
            except OSError:   # the last buffered write fails again on a full pool
                pass
        for h in handles:
            h.unmount()
    used = sn.store_space().used_bytes
    for i in range(n):
        sn.remove(f"c{i}")
    with sn.view("check", "image").mount(target):
        intact = digest(target) == before
    sn.remove("check")
    ok = bool(sn.pool_check().ok)
    over = (n + 2) * DEVICE_BYTES / p["pool_size"]
    return [{"container": i, "repeat": r, "bytes_written": written[i], "error": error[i], "image_intact": intact,
             "pool_used_bytes": used, "overcommit": over, "pool_ok_after": ok} for i in range(n)]
