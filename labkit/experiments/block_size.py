"""Experiment ``block-size``: the thin pool's data block size traded off — what a 4 KiB write that breaks
sharing costs, how much a snapshot owns afterwards, and how much metadata the pool keeps.

Runs labkit's pool in-process (:class:`labkit.thin.Pool`, no FUSE, no mounts): an origin device written
full, a snapshot of it, ``writes`` random 4 KiB writes into the snapshot.

Columns: ``block_bytes``, ``seconds_per_write``, ``bytes_exclusive``, ``metadata_blocks``, ``data_blocks``,
``bytes_used`` (and the parameter ``writes``).
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from typing import Any

from ..thin import Pool
from .common import MIB
from .framework import Context, Param, experiment


@experiment("block-size", title="thin pool block size: copy-on-write cost vs metadata vs space",
            params=[Param("block_size", "size", ["64K", "512K", "1M"], "pool block size", sweep=True),
                    Param("image_size", "size", "64M", "bytes written to the origin device"),
                    Param("writes", "int", 500, "random 4 KiB writes into the snapshot", min=1)],
            columns={"seconds_per_write": "mean time of one 4 KiB write that breaks sharing",
                     "bytes_exclusive": "bytes the snapshot owns after the writes",
                     "metadata_blocks": "used 4 KiB metadata blocks", "data_blocks": "used data blocks"},
            summary=lambda df: df[~df.warmup].groupby("block_bytes")[["seconds_per_write", "bytes_exclusive",
                                                                       "metadata_blocks"]].median())
def block_size_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """One block size: per repetition a fresh pool, an origin, a snapshot and the timed writes."""
    rows = []
    bs = p["block_size"]
    for r in range(repeat + 1):
        base = tempfile.mkdtemp(prefix="blocksize-", dir=ctx.root)
        try:
            with Pool.create(os.path.join(base, "pool"), data_size=4 * p["image_size"] + 64 * bs,
                             block_size=bs, commit_interval=None) as pool:
                pool.create_thin(1, p["image_size"])
                dev = pool.device(1)
                chunk = random.Random(r).randbytes(MIB)
                for off in range(0, p["image_size"], MIB):
                    dev.write(off, chunk[: min(MIB, p["image_size"] - off)])
                pool.commit()
                pool.create_snap(2, 1)
                snap = pool.device(2)
                rng = random.Random(1000 + r)
                offsets = [rng.randrange(p["image_size"] // 4096) * 4096 for _ in range(p["writes"])]
                t0 = time.perf_counter()
                for off in offsets:
                    snap.write(off, b"x" * 4096)
                pool.commit()
                secs = time.perf_counter() - t0
                u = pool.usage(2)
                st = pool.status()
                rows.append({"block_bytes": bs, "repeat": r, "writes": p["writes"],
                             "seconds_per_write": secs / p["writes"], "bytes_exclusive": u.exclusive_blocks * bs,
                             "metadata_blocks": st.used_metadata_blocks, "data_blocks": st.used_data_blocks,
                             "bytes_used": st.used_data_blocks * bs})
        finally:
            shutil.rmtree(base, ignore_errors=True)
        ctx.tick(1)
    return rows
