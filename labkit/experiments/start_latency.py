"""Experiment ``start-latency``: start to exit of ``/bin/true`` in a busybox root filesystem, network none,
for labkit's runtime and the OCI runtimes installed here (runc, crun). One case compares them all: they
share the rootfs and the bundle. A runtime that cannot run here is listed in ``df.attrs["skipped"]``.

Columns: ``runtime``, ``seconds``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from ..containers.bench import start_latency
from ..images.busybox import build_busybox_rootfs
from .framework import Context, Param, experiment


@experiment("start-latency", title="container start-to-exit of /bin/true: labkit vs runc (and crun)",
            params=[Param("runtimes", "choice", ["labkit", "runc", "crun"], "runtimes to compare",
                          choices=("labkit", "runc", "crun"), sweep=True)],
            columns={"runtime": "labkit, runc or crun", "seconds": "start to exit of /bin/true"},
            trials_per_case=lambda p: 1, whole_list=("runtimes",),
            summary=lambda df: df[~df.warmup].groupby("runtime").seconds.describe()[["count", "25%", "50%", "75%"]])
def start_latency_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """One case for all runtimes: a busybox rootfs in a scratch dir, each runtime started ``repeat`` times."""
    base = tempfile.mkdtemp(prefix="latency-", dir=ctx.root)
    try:
        rootfs = os.path.join(base, "rootfs")
        os.mkdir(rootfs)
        build_busybox_rootfs(rootfs)
        runtimes = p["runtimes"] if isinstance(p["runtimes"], list) else [p["runtimes"]]
        df = start_latency(os.path.join(base, "state"), rootfs, repeat=max(repeat, 1), warmup=1,
                           runtimes=tuple(runtimes))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ctx.tick(1)
    rows = []
    for rec in df.to_dict("records"):
        rows.append({"runtime": rec["runtime"], "repeat": 0 if rec["warmup"] else int(rec["repeat"]),
                     "seconds": rec["seconds"]})
    for name, why in df.attrs.get("skipped", {}).items():
        rows.append({"runtime": name, "repeat": -1, "seconds": float("nan"), "skipped": why})
    return rows
