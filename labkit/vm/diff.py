"""Differential testing: the same random operations on labkit's model and on the kernel's dm-thin.

:func:`model_replay` applies a sequence of :mod:`labkit.vm.ops` to :class:`labkit.thin.Pool` on the host
and records, at every commit, what :func:`labkit.vm.guestjobs.replay` records for the kernel in the VM.
:func:`compare` turns a pair of records into tidy rows, one per (seed, step, device, quantity) with the
``model`` and ``kernel`` values side by side. Compared at every commit point:

* per device: ``content`` (a hash per pool block, read through the device), thin_ls's
  ``mapped_blocks`` / ``exclusive_blocks`` / ``shared_blocks`` against :meth:`Pool.usage`, the recorded
  ``creation_time`` and ``snap_time``, and ``mapping_times`` (which virtual blocks are mapped, each with
  the time stamp of its mapping);
* per pool: the device list, ``used_data_blocks`` (``dmsetup status`` against :meth:`Pool.status`), the
  snapshot clock ``time``, ``sharing`` (which (device, virtual block) pairs share one data block: the
  partition, not the block numbers) and the outcome of every operation (``errors``).

Physical data block numbers and allocation order are not compared: they are free choices of each
allocator. What else may differ, and why, is :data:`EXPLAINED` (empty: nothing else differs).

>>> rows = kernel_diff(n_ops=60, seeds=[0])                         # doctest: +SKIP
>>> sum(not r["match"] and not r["explained"] for r in rows.rows)   # doctest: +SKIP
0
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..thin import Pool
from ..thin.records import Status
from ..thin.xml import XmlDevice, XmlDeviceEnd, XmlMapping, XmlSuperblock, read_xml
from .batch import Batch, run_jobs
from .kernelpool import hash_block
from .ops import Op, apply, generate, plan_for
from .runner import VM

__all__ = ["model_replay", "kernel_view", "compare", "kernel_diff", "KernelDiff", "EXPLAINED", "QUANTITIES"]

DEVICE_QUANTITIES = ("content", "mapped_blocks", "exclusive_blocks", "shared_blocks", "creation_time", "snap_time",
                     "mapping_times")
POOL_QUANTITIES = ("devices", "used_data_blocks", "time", "sharing", "errors")
QUANTITIES = DEVICE_QUANTITIES + POOL_QUANTITIES

#: quantity -> why the model may differ from the kernel there (a documented modelling choice). Empty:
#: every compared quantity must be equal.
EXPLAINED: dict[str, str] = {}


def _digest(items: Iterable[Any]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for it in items:
        h.update(repr(it).encode())
        h.update(b"\n")
    return h.hexdigest()


def _sharing(mappings: dict[int, list[tuple[int, int, int]]]) -> list[tuple[tuple[int, int], ...]]:
    """The partition of (device, virtual block) by data block, canonical (block numbers dropped)."""
    by_block: dict[int, list[tuple[int, int]]] = {}
    for dev, maps in mappings.items():
        for vb, db, _t in maps:
            by_block.setdefault(db, []).append((dev, vb))
    return sorted(tuple(sorted(v)) for v in by_block.values() if len(v) > 1)


def _view(step: int, hashes: dict[int, list[str]], usage: dict[int, tuple[int, int, int]],
          details: dict[int, tuple[int, int]], mappings: dict[int, list[tuple[int, int, int]]],
          used_data: int, clock: int) -> dict[str, Any]:
    return {"step": step, "hashes": hashes, "usage": usage, "details": details,
            "mapping_times": {d: [(vb, t) for vb, _db, t in m] for d, m in mappings.items()},
            "sharing": _sharing(mappings), "used_data_blocks": used_data, "time": clock}


def model_replay(seed: int, n_ops: int = 0, *, block_size: int = 64 << 10, ops: Sequence[Op] | None = None,
                 data_size: int | None = None, workdir: str | None = None) -> dict[str, Any]:
    """Apply sequence ``seed`` (or ``ops``, payloads drawn from ``seed``) to a fresh :class:`Pool` of
    ``data_size`` bytes (no time-based commits); a view at every commit."""
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="labkit-model-", dir="/var/tmp")
    views, errors = [], {}
    try:
        with Pool.create(os.path.join(workdir, "pool"), data_size=data_size or plan_for(block_size).data_size,
                         block_size=block_size, commit_interval=None) as pool:
            sizes: dict[int, int] = {}
            for i, op in enumerate(ops if ops is not None else generate(seed, n_ops)):
                try:
                    apply(pool, op, i, seed, sizes)
                except OSError as e:
                    errors[i] = f"{type(e).__name__}: errno {e.errno}"
                if op.kind == "commit":
                    views.append(model_view(pool, i))
                    views[-1]["status"] = str(pool.status())
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"seed": seed, "views": views, "errors": errors}


def model_view(pool: Pool, step: int) -> dict[str, Any]:
    """What :func:`compare` needs from a model pool, now."""
    bs = pool.block_size
    hashes = {}
    for d in pool.devices():
        dev = pool.device(d)
        hashes[d] = [hash_block(dev.read(off, bs)) for off in range(0, dev.size, bs)]
    usage = {d: (u.mapped_blocks, u.exclusive_blocks, u.shared_blocks) for d, u in pool.usages().items()}
    details = {d: (pool.details(d).creation_time, pool.details(d).snap_time) for d in pool.devices()}
    mappings = {d: pool.mappings(d) for d in pool.devices()}
    return _view(step, hashes, usage, details, mappings, pool.status().used_data_blocks, pool.time)


def kernel_view(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The same view from one of the guest's checkpoints (thin_dump XML, thin_ls, dmsetup status)."""
    details: dict[int, tuple[int, int]] = {}
    mappings: dict[int, list[tuple[int, int, int]]] = {}
    clock = 0
    dev = -1
    for rec in read_xml(io.StringIO(checkpoint["xml"])):
        if isinstance(rec, XmlSuperblock):
            clock = rec.time
        elif isinstance(rec, XmlDevice):
            dev = rec.dev_id
            details[dev] = (rec.creation_time, rec.snap_time)
            mappings[dev] = []
        elif isinstance(rec, XmlMapping):
            mappings[dev].extend((rec.origin + k, rec.data + k, rec.time) for k in range(rec.length))
        elif isinstance(rec, XmlDeviceEnd):
            dev = -1
    for m in mappings.values():
        m.sort()
    usage = {int(d): tuple(v) for d, v in checkpoint["thin_ls"].items()}
    hashes = {int(d): h for d, h in checkpoint["hashes"].items()}
    used = Status.parse(checkpoint["status"]).used_data_blocks
    view = _view(checkpoint["step"], hashes, usage, details, mappings, used, clock)
    view["status"] = checkpoint["status"]
    return view


def _row(seed: int, step: int, device: str, quantity: str, model: Any, kernel: Any, detail: str = "") -> dict[str, Any]:
    match = model == kernel
    return {"seed": seed, "step": step, "device": device, "quantity": quantity, "model": model, "kernel": kernel,
            "match": match, "explained": "" if match else EXPLAINED.get(quantity, ""), "detail": detail}


def compare(seed: int, model: dict[str, Any], kernel: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for every commit point of one sequence: model record (:func:`model_replay`) against kernel
    record (:func:`labkit.vm.guestjobs.replay`)."""
    rows: list[dict[str, Any]] = []
    kviews = [kernel_view(c) for c in kernel["checkpoints"]]
    merrors = {int(k): v for k, v in model["errors"].items()}
    kerrors = {int(k): v for k, v in kernel["errors"].items()}
    if len(kviews) != len(model["views"]):
        rows.append(_row(seed, -1, "pool", "checkpoints", len(model["views"]), len(kviews)))
    for mv, kv in zip(model["views"], kviews):
        step = mv["step"]
        mdevs, kdevs = sorted(mv["hashes"]), sorted(kv["hashes"])
        rows.append(_row(seed, step, "pool", "devices", " ".join(map(str, mdevs)), " ".join(map(str, kdevs))))
        for dev in sorted(set(mdevs) & set(kdevs)):
            mh, kh = mv["hashes"][dev], kv["hashes"][dev]
            bad = [i for i, (a, b) in enumerate(zip(mh, kh)) if a != b]
            rows.append(_row(seed, step, str(dev), "content", _digest(mh), _digest(kh),
                             f"blocks differing: {bad[:20]}" if bad or len(mh) != len(kh) else ""))
            mu, ku = mv["usage"].get(dev, (None,) * 3), kv["usage"].get(dev, (None,) * 3)
            for q, a, b in zip(("mapped_blocks", "exclusive_blocks", "shared_blocks"), mu, ku):
                rows.append(_row(seed, step, str(dev), q, a, b))
            md, kd = mv["details"].get(dev, (None, None)), kv["details"].get(dev, (None, None))
            rows.append(_row(seed, step, str(dev), "creation_time", md[0], kd[0]))
            rows.append(_row(seed, step, str(dev), "snap_time", md[1], kd[1]))
            mt, kt = mv["mapping_times"].get(dev, []), kv["mapping_times"].get(dev, [])
            diff = sorted(set(mt) ^ set(kt))
            rows.append(_row(seed, step, str(dev), "mapping_times", _digest(mt), _digest(kt),
                             f"(block, time) on one side only: {diff[:10]}" if diff else ""))
        rows.append(_row(seed, step, "pool", "used_data_blocks", mv["used_data_blocks"], kv["used_data_blocks"]))
        rows.append(_row(seed, step, "pool", "time", mv["time"], kv["time"]))
        ms, ks = mv["sharing"], kv["sharing"]
        rows.append(_row(seed, step, "pool", "sharing", _digest(ms), _digest(ks),
                         f"shared groups model {len(ms)} kernel {len(ks)}; first differing: "
                         f"{sorted(set(ms) ^ set(ks))[:3]}" if ms != ks else ""))
        upto = {i: e for i, e in merrors.items() if i <= step}, {i: e for i, e in kerrors.items() if i <= step}
        rows.append(_row(seed, step, "pool", "errors", str(sorted(upto[0].items())), str(sorted(upto[1].items()))))
    return rows


@dataclass
class KernelDiff:
    """Result of :func:`kernel_diff`: tidy ``rows``, the VM batch (boot and guest times), host seconds."""

    rows: list[dict[str, Any]]
    batch: Batch
    model_seconds: float
    seeds: list[int] = field(default_factory=list)

    @property
    def mismatches(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if not r["match"]]

    @property
    def unexplained(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if not r["match"] and not r["explained"]]


def replay_jobs(seeds: Sequence[int], n_ops: int, *, block_size: int = 64 << 10) -> list[dict[str, Any]]:
    """The VM jobs for :func:`kernel_diff` (to batch them with others into one boot)."""
    return [{"name": f"replay-{s}", "job": "replay", "kwargs": {"seed": s, "n_ops": n_ops, "block_size": block_size}}
            for s in seeds]


def diff_from_batch(batch: Batch, seeds: Sequence[int], n_ops: int, *,
                    block_size: int = 64 << 10) -> KernelDiff:
    """Run the model for ``seeds`` on the host and compare with the batch's ``replay-<seed>`` results."""
    t0 = time.monotonic()
    rows = []
    for s in seeds:
        kernel = batch.require(f"replay-{s}")
        model = model_replay(s, n_ops, block_size=block_size)
        rows += compare(s, model, kernel)
    return KernelDiff(rows, batch, time.monotonic() - t0, list(seeds))


def kernel_diff(n_ops: int = 300, seeds: Sequence[int] = (0, 1, 2), *, block_size: int = 64 << 10,
                vm: VM | None = None, on_output: Callable[[str], None] | None = None,
                timeout: float | None = None) -> KernelDiff:
    """Boot once, replay every seed on the kernel, replay them on the model, compare."""
    batch = run_jobs(replay_jobs(seeds, n_ops, block_size=block_size), vm=vm, on_output=on_output, timeout=timeout)
    try:
        return diff_from_batch(batch, seeds, n_ops, block_size=block_size)
    finally:
        shutil.rmtree(batch.scratch, ignore_errors=True)
