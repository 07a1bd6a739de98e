"""One format: labkit's pool and the kernel's pool read each other's metadata (thin_dump XML) and data.

* labkit -> kernel: :func:`prepare_labkit_pool` builds a :class:`labkit.thin.Pool` from an operation
  sequence and dumps its metadata with :meth:`Pool.dump_xml`; in the VM,
  :func:`labkit.vm.guestjobs.read_restored` ``thin_restore``\\ s that XML onto a fresh metadata device and
  activates a read-only kernel pool over labkit's own data file; :func:`check_restored` then demands
  every device's bytes, ``thin_check`` and thin_ls's counts to agree with the model.
* kernel -> labkit: :func:`labkit.vm.guestjobs.dump_built` builds a kernel pool from a sequence,
  ``thin_dump``\\ s it and copies its data file out; :func:`check_dumped` restores the XML with
  :meth:`Pool.restore_xml` over the kernel's data file and demands ``check()`` to pass and the same bytes.

>>> jobs, expect = prepare(scratch)                                 # doctest: +SKIP
>>> batch = run_jobs(jobs); check_restored(batch, expect)           # doctest: +SKIP
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from ..thin import Pool
from .batch import Batch
from .diff import model_view
from .ops import apply, generate, plan_for

__all__ = ["prepare", "prepare_labkit_pool", "check_restored", "check_dumped", "FormatReport"]


class FormatReport(dict):
    """{"problems": [...], ...}: empty problems means the direction works; the rest is for the reader."""

    @property
    def problems(self) -> list[str]:
        return self["problems"]


def prepare_labkit_pool(directory: str, seed: int, n_ops: int, *, block_size: int = 64 << 10) -> dict[str, Any]:
    """Build a model pool in ``directory/pool`` from sequence ``seed``, dump ``directory/labkit.xml``;
    return what the kernel must then read (sizes, block hashes, usage)."""
    plan = plan_for(block_size)
    sizes: dict[int, int] = {}
    with Pool.create(os.path.join(directory, "pool"), data_size=plan.data_size, block_size=block_size,
                     commit_interval=None) as pool:
        for i, op in enumerate(generate(seed, n_ops)):
            apply(pool, op, i, seed, sizes)
        view = model_view(pool, -1)
        with open(os.path.join(directory, "labkit.xml"), "w") as f:
            pool.dump_xml(f)
    return {"sizes": {str(d): s for d, s in sizes.items()}, "hashes": {str(d): h for d, h in view["hashes"].items()},
            "usage": {str(d): list(u) for d, u in view["usage"].items()}, "block_size": block_size}


def prepare(scratch: str, *, seed: int = 7, n_ops: int = 80, block_size: int = 64 << 10
            ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Both directions' VM jobs (``formats-restore``, ``formats-dump``) and what to expect of them."""
    base = os.path.join(scratch, "formats")
    to_kernel, from_kernel = os.path.join(base, "to-kernel"), os.path.join(base, "from-kernel")
    os.makedirs(to_kernel)
    os.makedirs(from_kernel)
    expect = prepare_labkit_pool(to_kernel, seed, n_ops, block_size=block_size)
    jobs = [{"name": "formats-restore", "job": "read_restored",
             "kwargs": {"xml": os.path.join(to_kernel, "labkit.xml"), "data": os.path.join(to_kernel, "pool", "data"),
                        "sizes": expect["sizes"], "block_size": block_size}},
            {"name": "formats-dump", "job": "dump_built",
             "kwargs": {"seed": seed + 1, "n_ops": n_ops, "out_dir": from_kernel, "block_size": block_size}}]
    expect["from_kernel"] = from_kernel
    return jobs, expect


def check_restored(batch: Batch, expect: dict[str, Any]) -> FormatReport:
    """labkit -> kernel: the kernel read labkit's metadata and data; every device's blocks equal."""
    got = batch.require("formats-restore")
    problems = []
    if got["thin_check"] != 0:
        problems.append(f"thin_check of the restored metadata failed: {got['thin_check_output']}")
    for dev, hashes in expect["hashes"].items():
        k = got["hashes"].get(dev)
        if k != hashes:
            bad = [i for i, (a, b) in enumerate(zip(hashes, k or [])) if a != b]
            problems.append(f"device {dev}: the kernel reads different bytes (blocks {bad[:10]})")
        if list(got["thin_ls"].get(dev, [])) != expect["usage"][dev]:
            problems.append(f"device {dev}: thin_ls {got['thin_ls'].get(dev)} vs Pool.usage {expect['usage'][dev]}")
    if sorted(got["thin_ls"]) != sorted(expect["hashes"]):
        problems.append(f"devices: kernel {sorted(got['thin_ls'])} vs labkit {sorted(expect['hashes'])}")
    return FormatReport(problems=problems, devices=len(expect["hashes"]), status=got["status"],
                        blocks=sum(len(h) for h in expect["hashes"].values()))


def check_dumped(batch: Batch, expect: dict[str, Any]) -> FormatReport:
    """kernel -> labkit: ``Pool.restore_xml`` of the kernel's XML over its data file passes ``check()``
    and reads the bytes the kernel read."""
    got = batch.require("formats-dump")
    src = expect["from_kernel"]
    work = tempfile.mkdtemp(prefix="labkit-restore-", dir=os.path.dirname(src))
    problems = []
    try:
        sizes = {int(d): s for d, s in got["sizes"].items()}
        with open(os.path.join(src, "kernel.xml")) as f:
            pool = Pool.restore_xml(f, os.path.join(work, "pool"), virtual_sizes=sizes, commit_interval=None)
        pool.close()
        data = os.path.join(work, "pool", "data")
        if os.path.getsize(os.path.join(src, "data")) != os.path.getsize(data):
            problems.append(f"data file sizes differ: kernel {os.path.getsize(os.path.join(src, 'data'))} "
                            f"vs restored pool {os.path.getsize(data)}")
        os.replace(os.path.join(src, "data"), data)
        with Pool.open(os.path.join(work, "pool"), commit_interval=None) as pool:
            rep = pool.check()
            if not rep.ok:
                problems.append(f"check() of the restored pool: {rep}")
            view = model_view(pool, -1)
        for dev, hashes in got["hashes"].items():
            mine = view["hashes"].get(int(dev))
            if mine != hashes:
                bad = [i for i, (a, b) in enumerate(zip(hashes, mine or [])) if a != b]
                problems.append(f"device {dev}: labkit reads different bytes (blocks {bad[:10]})")
            if list(view["usage"].get(int(dev), ())) != list(got["thin_ls"].get(dev, [])):
                problems.append(f"device {dev}: Pool.usage {view['usage'].get(int(dev))} vs kernel thin_ls "
                                f"{got['thin_ls'].get(dev)}")
        return FormatReport(problems=problems, devices=len(got["hashes"]), check=str(rep),
                            blocks=sum(len(h) for h in got["hashes"].values()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
