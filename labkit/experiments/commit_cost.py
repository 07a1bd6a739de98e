"""Experiment ``commit-cost``: commit time and the bytes a new image adds, against how much a container
changed (files of realistic sizes written on top of an image).

Columns: ``changed_bytes``, ``seconds`` (commit), ``bytes_added`` (usage of the new image).
"""
from __future__ import annotations

import time
from typing import Any

from .common import backend_param, make_image, median_table, scratch_store
from .fill import fill_tree
from .framework import Context, Param, experiment


@experiment("commit-cost", title="commit time and bytes added against the amount a container changed",
            params=[backend_param(),
                    Param("changed", "size", ["1M", "16M", "128M"], "bytes the container writes", sweep=True),
                    Param("image_size", "size", "64M", "image size")],
            columns={"changed_bytes": "bytes written", "seconds": "commit time",
                     "bytes_added": "usage of the new image"},
            summary=lambda df: median_table(df, ["backend", "changed_bytes"], "seconds"))
def commit_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """One backend and amount: per repetition a container writes, is committed (timed), and the image removed."""
    rows = []
    with scratch_store(ctx, p["backend"], p["image_size"] + (repeat + 1) * p["changed"]) as (sn, target):
        make_image(sn, target, "image", p["image_size"], seed=3)
        for r in range(repeat + 1):
            key = f"c{r}"
            with sn.prepare(key, "image").mount(target):
                fill_tree(target, p["changed"], seed=100 + r)
            t0 = time.perf_counter()
            sn.commit(f"img{r}", key)
            secs = time.perf_counter() - t0
            rows.append({"changed_bytes": p["changed"], "repeat": r, "seconds": secs,
                         "bytes_added": sn.usage(f"img{r}").size})
            sn.remove(f"img{r}")
            ctx.tick(1)
    return rows
