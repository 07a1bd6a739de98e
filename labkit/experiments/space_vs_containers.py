"""Experiment ``space-vs-containers``: what a store occupies as containers of one image write data.

One image; then containers are started from it one by one, each writing ``write`` bytes into a new file.
After each, the store's space is measured the backend's own way (``store_space()``: pool blocks for a thin
pool, filesystem blocks of a loop-file filesystem, allocated bytes of the layer directories otherwise).

Columns: ``containers`` (0..N), ``bytes_used``, ``bytes_added`` (minus the image alone),
``bytes_exclusive`` (sum of the containers' ``usage``).

>>> from labkit.experiments import framework
>>> df = framework.run("space-vs-containers", backend=["thin", "copy"], containers=4)   # doctest: +SKIP
"""
from __future__ import annotations

import os
from typing import Any

from .common import backend_param, make_image, median_table, scratch_store, write_file
from .framework import Context, Param, experiment


@experiment("space-vs-containers", title="store space as containers of one image write data",
            params=[backend_param(), Param("containers", "int", 8, "containers started from the image", min=1, max=200),
                    Param("write", "size", "4M", "bytes each container writes"),
                    Param("image_size", "size", "64M", "image size")],
            columns={"containers": "containers running so far", "bytes_used": "bytes the store occupies",
                     "bytes_added": "bytes_used minus the image alone", "bytes_exclusive": "sum of containers' usage"},
            trials_per_case=lambda p: p["containers"],
            summary=lambda df: median_table(df[df.containers == df.containers.max()], ["backend"], "bytes_added"))
def space_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """Each repetition in a fresh store: the image, then N containers each writing a file."""
    rows = []
    for r in range(repeat + 1):
        with scratch_store(ctx, p["backend"], p["image_size"] + p["containers"] * p["write"]) as (sn, target):
            make_image(sn, target, "image", p["image_size"], seed=1)
            before = sn.store_space().used_bytes
            rows.append({"containers": 0, "repeat": r, "bytes_used": before, "bytes_added": 0, "bytes_exclusive": 0})
            excl = 0
            for n in range(1, p["containers"] + 1):
                key = f"c{n}"
                with sn.prepare(key, "image").mount(target):
                    write_file(os.path.join(target, "data"), p["write"], seed=n)
                excl += sn.usage(key).size
                used = sn.store_space().used_bytes
                rows.append({"containers": n, "repeat": r, "bytes_used": used, "bytes_added": used - before,
                             "bytes_exclusive": excl})
                ctx.tick(1)
    return rows
