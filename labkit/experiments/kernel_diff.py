"""Experiment ``kernel-diff``: labkit's thin-pool model against the kernel's dm-thin, operation by operation.

``seeds`` random sequences of ``ops`` pool operations (create_thin, create_snap of thin devices and of
snapshots, 4 KiB..1 MiB writes, discards, delete, commit; :mod:`labkit.vm.ops`) are applied to
:class:`labkit.thin.Pool` on this host and to a kernel pool in ONE qemu VM boot (:mod:`labkit.vm`). At
every commit point each device's content (a hash per pool block), thin_ls's mapped / exclusive / shared
counts (kernel: ``reserve_metadata_snap`` + ``thin_ls -m``) against ``Pool.usage``, the devices' creation
and snapshot times, every mapping's time stamp, the sharing partition, the pool's used data blocks and
clock, and every operation's outcome are compared (:func:`labkit.vm.diff.compare`). Physical block
numbers may differ; anything else that differs is a bug unless :data:`labkit.vm.diff.EXPLAINED` says why.

Columns: ``seed, step`` (index of the commit operation), ``device`` (an id, or ``pool``), ``quantity``,
``model_value``, ``kernel_value`` (as text; ``kernel`` is the host's kernel release, as on every row),
``match``, ``explained`` (the documented reason for an allowed difference), ``detail``; and, the same on
every row, ``vm_boot_seconds``, ``vm_seconds`` and ``model_seconds`` (wall times of the emulated guest:
not comparable with anything measured on the host).

Needs qemu, a kernel image with dm_thin_pool and virtme-ng (``labkit vm check``); without them the case
raises :class:`~labkit.errors.Unsupported` with the install command.

>>> df = run("kernel-diff", ops=60, seeds=1, repeat=1)               # doctest: +SKIP
>>> int((~df.match & (df.explained == "")).sum())                    # doctest: +SKIP
0
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from ..vm.diff import kernel_diff
from ..vm.runner import VM
from .framework import Context, Param, experiment


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per quantity: rows compared, mismatches, unexplained mismatches."""
    d = df.assign(mismatch=~df.match.astype(bool), unexplained=~df.match.astype(bool) & (df.explained.fillna("") == ""))
    return d.groupby("quantity").agg(compared=("match", "size"), mismatches=("mismatch", "sum"),
                                     unexplained=("unexplained", "sum"))


@experiment("kernel-diff", title="labkit's thin pool against the kernel's dm-thin (in a VM): every difference",
            params=[Param("ops", "int", 300, "operations per sequence", min=2, max=100000),
                    Param("seeds", "int", 3, "sequences (seeds 0..seeds-1), all in one VM boot", min=1, max=100),
                    Param("block_size", "size", "64K", "pool data block size"),
                    Param("memory", "str", "2G", "guest memory")],
            columns={"seed": "sequence", "step": "index of the commit operation", "device": "device id or pool",
                     "quantity": "what is compared", "model_value": "labkit's value",
                     "kernel_value": "the kernel's dm-thin's value",
                     "match": "equal", "explained": "why a difference is allowed (empty: a bug)",
                     "detail": "which blocks or groups differ"},
            trials_per_case=lambda p: 1, summary=summary)
def kernel_diff_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """One VM boot for every seed; the comparison is exact, so one run (``repeat`` is ignored)."""
    res = kernel_diff(p["ops"], list(range(p["seeds"])), block_size=p["block_size"],
                      vm=VM(memory=p["memory"]), on_output=lambda line: None)
    ctx.tick(repeat + 1)
    extra = {"repeat": 1, "vm_boot_seconds": res.batch.vm.boot_seconds, "vm_seconds": res.batch.vm.seconds,
             "model_seconds": res.model_seconds, "vm_accel": res.batch.vm.accel}
    # `kernel` is taken: every row carries the host's kernel release under that name
    return [{**{k: v for k, v in r.items() if k not in ("model", "kernel")}, "model_value": str(r["model"]),
             "kernel_value": str(r["kernel"]), **extra} for r in res.rows]
