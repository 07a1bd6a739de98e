"""Experiment ``cow-penalty``: the first write into data a container inherited from its image (it breaks
sharing: a whole file for overlayfs, an extent for btrfs/reflink, a block for thin) against a rewrite of
the same bytes (already private).

The image is one big file; each repetition prepares a container, syncs (what prepare left dirty, such as
copy's ``cp``, must not be charged to the first write), then times pwrite + fsync twice at one offset.

Columns: ``phase`` (first_write, rewrite), ``write_bytes``, ``seconds``.
"""
from __future__ import annotations

import os
import random
import time
from typing import Any

from .common import backend_param, make_image, median_table, scratch_store
from .framework import Context, Param, experiment


@experiment("cow-penalty", title="first write into inherited data vs a rewrite, by write size",
            params=[backend_param(("overlay", "btrfs", "reflink", "thin", "copy")),
                    Param("write", "size", ["4K", "64K", "1M"], "bytes written into the inherited file", sweep=True),
                    Param("file_size", "size", "256M", "size of the inherited file")],
            columns={"phase": "first_write (breaks sharing) or rewrite (already private)",
                     "write_bytes": "bytes written", "seconds": "pwrite + fsync"},
            summary=lambda df: median_table(df, ["backend", "write_bytes", "phase"], "seconds"))
def cow_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """One backend and write size: an image of one file, then a container per repetition."""
    rows = []
    data = random.Random(7).randbytes(p["write"])
    with scratch_store(ctx, p["backend"], p["file_size"]) as (sn, target):
        make_image(sn, target, "image", p["file_size"], one_file=True)
        for r in range(repeat + 1):
            key = f"c{r}"
            with sn.prepare(key, "image").mount(target):
                path = os.path.join(target, "big")
                offset = random.Random(r).randrange(0, max(1, p["file_size"] - p["write"])) // 4096 * 4096
                os.sync()  # what prepare left dirty (copy's cp) must not be charged to the first write
                for phase in ("first_write", "rewrite"):
                    t0 = time.perf_counter()
                    fd = os.open(path, os.O_WRONLY)
                    try:
                        os.pwrite(fd, data, offset)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    rows.append({"phase": phase, "write_bytes": p["write"], "repeat": r,
                                 "seconds": time.perf_counter() - t0})
            sn.remove(key)
            ctx.tick(1)
    return rows
