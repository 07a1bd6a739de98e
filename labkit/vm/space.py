"""Level 08's space lesson, the same on the model and on the kernel.

1. **Space per container**: :func:`labkit.vm.ops.space_ops` — an image device written, then containers as
   snapshots of it, each overwriting part of it — replayed on :class:`labkit.thin.Pool` and on the kernel
   (the ``space`` job); :func:`space_rows` lays the thin_ls counts and the pool's used blocks side by side.
2. **Pool exhaustion**: a device bigger than its pool written 64 KiB at a time. :func:`model_fill` on the
   model, the ``fill`` job on the kernel, once with ``error_if_no_space`` and once with queueing.

>>> jobs = space_jobs(containers=2, image_bytes=2 << 20, write_bytes=1 << 20)
>>> [j["name"] for j in jobs]
['space', 'fill-error_if_no_space', 'fill-queue_if_no_space']
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from typing import Any

from ..thin import Pool, PoolFull
from .batch import Batch
from .diff import compare, model_replay
from .ops import space_ops

__all__ = ["space_jobs", "space_data_size", "space_rows", "model_fill", "space_compare"]

FILL_CHUNK = 64 << 10


def space_data_size(containers: int, image_bytes: int, write_bytes: int) -> int:
    """A pool that holds the image and every container's writes twice over (a multiple of 1 MiB)."""
    return -(-2 * (image_bytes + containers * write_bytes) // (1 << 20)) * (1 << 20)


def space_jobs(*, containers: int, image_bytes: int, write_bytes: int, block_size: int = 64 << 10,
               fill_size: int = 4 << 20) -> list[dict[str, Any]]:
    """The kernel's side, as VM jobs: the space sequence, then the two exhaustion modes."""
    ops = [o.to_json() for o in space_ops(containers, image_bytes, write_bytes)]
    return [{"name": "space", "job": "replay",
             "kwargs": {"seed": 0, "ops": ops, "block_size": block_size,
                        "data_size": space_data_size(containers, image_bytes, write_bytes)}}] + [
        {"name": f"fill-{mode}", "job": "fill",
         "kwargs": {"error_if_no_space": mode == "error_if_no_space", "data_size": fill_size, "block_size": block_size}}
        for mode in ("error_if_no_space", "queue_if_no_space")]


def _model_space(containers: int, image_bytes: int, write_bytes: int, block_size: int) -> dict[str, Any]:
    return model_replay(0, ops=space_ops(containers, image_bytes, write_bytes), block_size=block_size,
                        data_size=space_data_size(containers, image_bytes, write_bytes))


def space_compare(batch: Batch, *, containers: int, image_bytes: int, write_bytes: int,
                  block_size: int = 64 << 10) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """Replay the space sequence on the model; return (:func:`space_rows`, the full comparison rows of
    :func:`labkit.vm.diff.compare`, the last status line of each side)."""
    kernel = batch.require("space")
    model = _model_space(containers, image_bytes, write_bytes, block_size)
    rows = space_rows(model, kernel, block_size)
    last = {"model": model["views"][-1]["status"], "kernel": kernel["checkpoints"][-1]["status"]}
    return rows, compare(0, model, kernel), last


def space_rows(model: dict[str, Any], kernel: dict[str, Any], block_size: int) -> list[dict[str, Any]]:
    """Tidy rows, one per (containers, side, device): mapped / exclusive / shared bytes of each device
    (thin_ls on the kernel, ``Pool.usage`` on the model) and, as device ``pool``, the data in use."""
    rows = []
    for k, (mv, kc) in enumerate(zip(model["views"], kernel["checkpoints"])):
        sides = {"model": (mv["usage"], mv["used_data_blocks"]),
                 "kernel": ({int(d): tuple(v) for d, v in kc["thin_ls"].items()},
                            int(kc["status"].split()[5].split("/")[0]))}
        for side, (usage, used) in sides.items():
            for dev, (mapped, excl, shared) in sorted(usage.items()):
                rows.append({"containers": k, "side": side, "device": "image" if dev == 1 else f"container {dev - 99}",
                             "mapped_bytes": mapped * block_size, "exclusive_bytes": excl * block_size,
                             "shared_bytes": shared * block_size})
            rows.append({"containers": k, "side": side, "device": "pool", "used_data_bytes": used * block_size})
    return rows


def model_fill(error_if_no_space: bool, *, data_size: int = 4 << 20, block_size: int = 64 << 10) -> dict[str, Any]:
    """The ``fill`` job on the model: a device of 4x the pool written 64 KiB at a time up to 1 MiB past
    the pool's end. The model never queues: with ``queue_if_no_space`` it fails the write too, and says
    in ``status().queued_io`` that the kernel would have queued it."""
    work = tempfile.mkdtemp(prefix="labkit-fill-", dir="/var/tmp")
    try:
        with Pool.create(os.path.join(work, "pool"), data_size=data_size, block_size=block_size,
                         error_if_no_space=error_if_no_space, commit_interval=None) as pool:
            pool.create_thin(1, 4 * data_size)
            dev = pool.device(1)
            chunk = b"\xab" * FILL_CHUNK
            written, outcome, err = 0, "finished", None
            while written < data_size + (1 << 20):
                try:
                    dev.write(written, chunk)
                except PoolFull as e:
                    outcome, err = "error", e.errno
                    break
                written += FILL_CHUNK
            st = pool.status()
            return {"mode": "error_if_no_space" if error_if_no_space else "queue_if_no_space",
                    "bytes_written": written, "outcome": outcome, "errno": err, "status": str(st),
                    "queued_io": st.queued_io, "errno_name": errno.errorcode.get(err or 0, "")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
