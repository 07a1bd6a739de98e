"""What runs inside the VM: each job drives the kernel's dm-thin and returns plain JSON-able results.

The host never sees the guest's devices, only these results (and files the jobs leave in the scratch
directory). Jobs:

* :func:`replay` — apply an operation sequence (:mod:`labkit.vm.ops`) to a kernel pool; at every
  commit record each device's block hashes, ``thin_ls -m`` and ``thin_dump -m`` of a metadata snapshot
  and ``dmsetup status``;
* :func:`read_restored` — ``thin_restore`` XML (labkit's ``Pool.dump_xml``) onto a fresh metadata
  device, activate a read-only pool over labkit's data file, hash every device;
* :func:`dump_built` — build a kernel pool from a sequence, hash its devices, ``thin_dump`` it and leave
  the XML and a sparse copy of the data file for the host;
* :func:`fill` — a pool filled past its end, with ``error_if_no_space`` or with queueing;
* :func:`kernel_info` — kernel release and the thin targets' versions.

Only the standard library (see :mod:`labkit.vm.kernelpool`).
"""
from __future__ import annotations

import fcntl
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from .._sys import dm, loop
from .kernelpool import KernelPool, block_hashes_of, dm_available, parse_thin_ls
from .ops import Op, generate, payload, plan_for

LOOP_SET_CAPACITY = 0x4C07

__all__ = ["JOBS", "replay", "read_restored", "dump_built", "fill", "kernel_info"]


def _workdir(name: str) -> str:
    base = os.environ.get("LABKIT_VM_TMP") or "/tmp"
    path = os.path.join(base, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def kernel_info() -> dict[str, Any]:
    """Kernel release and device-mapper's targets (name -> version, as ``dmsetup targets`` lists them)."""
    why = dm_available()
    targets = dm.targets() if why is None else {}
    tools = subprocess.run(["thin_ls", "-V"], capture_output=True, text=True).stdout.strip()
    return {"kernel": os.uname().release, "targets": targets, "dm_missing": why,
            "thin_provisioning_tools": tools}


def apply_op(kp: KernelPool, seed: int, i: int, op: Op) -> str | None:
    """Apply one operation; an OSError becomes its text (compared with the model's outcome)."""
    try:
        if op.kind == "create_thin":
            kp.create_thin(op.dev, op.size)
        elif op.kind == "create_snap":
            kp.create_snap(op.dev, op.origin)
        elif op.kind == "write":
            kp.write(op.dev, op.offset, payload(seed, i, op.length))
        elif op.kind == "discard":
            kp.discard(op.dev, op.offset, op.length)
        elif op.kind == "delete":
            kp.delete(op.dev)
        else:
            kp.commit()
    except OSError as e:
        return f"{type(e).__name__}: errno {e.errno}"
    return None


def _checkpoint(kp: KernelPool, step: int) -> dict[str, Any]:
    ls, xml = kp.inspect()
    return {"step": step, "status": kp.status(), "thin_ls": {str(k): v for k, v in ls.items()}, "xml": xml,
            "sizes": {str(d): s for d, s in kp.sizes.items()},
            "hashes": {str(d): kp.block_hashes(d) for d in sorted(kp.sizes)}}


def replay(seed: int, n_ops: int = 0, block_size: int = 64 << 10, zeroing: bool = True,
           ops: list[dict[str, Any]] | None = None, data_size: int | None = None) -> dict[str, Any]:
    """Apply :func:`labkit.vm.ops.generate` (``seed``, ``n_ops``) — or the given ``ops`` (JSON of
    :class:`~labkit.vm.ops.Op`, payloads still drawn from ``seed``) — to a fresh kernel pool of
    ``data_size`` bytes (default: :func:`~labkit.vm.ops.plan_for`'s); a checkpoint at every commit."""
    seq = [Op.from_json(o) for o in ops] if ops is not None else generate(seed, n_ops)
    work = _workdir(f"replay-{seed}")
    kp = KernelPool.create(work, data_size=data_size or plan_for(block_size).data_size, block_size=block_size,
                           zeroing=zeroing, name=f"lkdiff{seed}")
    checkpoints, errors = [], {}
    t0 = time.monotonic()
    try:
        for i, op in enumerate(seq):
            err = apply_op(kp, seed, i, op)
            if err:
                errors[str(i)] = err
            if op.kind == "commit":
                checkpoints.append(_checkpoint(kp, i))
    finally:
        kp.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"seed": seed, "n_ops": len(seq), "block_size": block_size, "checkpoints": checkpoints, "errors": errors,
            "seconds": time.monotonic() - t0}


def read_restored(xml: str, data: str, sizes: dict[str, int], block_size: int) -> dict[str, Any]:
    """``thin_restore`` labkit's XML onto a new metadata device; activate the pool read-only over
    labkit's own data file; hash every device and ``thin_ls`` it."""
    work = _workdir("restored")
    meta = os.path.join(work, "metadata")
    with open(meta, "wb") as f:
        f.truncate(16 << 20)
    kp = KernelPool(work, name="lkrestored", block_size=block_size, read_only=True)
    try:
        kp.attach(data_file=data, metadata_file=meta)
        restore = subprocess.run(["thin_restore", "-i", xml, "-o", kp.meta_dev], capture_output=True, text=True)
        if restore.returncode:
            raise RuntimeError(f"thin_restore failed: {restore.stderr.strip()[-300:]}")
        check = subprocess.run(["thin_check", kp.meta_dev], capture_output=True, text=True)
        ls = parse_thin_ls(subprocess.run(
            ["thin_ls", "--no-headers", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS", kp.meta_dev],
            capture_output=True, text=True, check=True).stdout)
        kp.load_pool()
        hashes = {}
        for dev, size in sorted(sizes.items(), key=lambda kv: int(kv[0])):
            path = kp.activate_dev(int(dev), int(size))
            hashes[dev] = block_hashes_of(path, int(size), block_size)
        status = kp.status()
    finally:
        kp.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"hashes": hashes, "thin_ls": {str(k): v for k, v in ls.items()}, "status": status,
            "thin_check": check.returncode, "thin_check_output": (check.stdout + check.stderr).strip()[-500:]}


def _sparse_copy(src: str, dst: str, chunk: int = 1 << 20) -> int:
    """Copy ``src`` to ``dst`` writing only non-zero chunks (9p has no SEEK_HOLE); bytes written."""
    written = 0
    zero = bytes(chunk)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        size = os.fstat(fi.fileno()).st_size
        fo.truncate(size)
        off = 0
        while off < size:
            buf = fi.read(chunk)
            if not buf:
                break
            if buf != zero[:len(buf)]:
                fo.seek(off)
                fo.write(buf)
                written += len(buf)
            off += len(buf)
    return written


def dump_built(seed: int, n_ops: int, out_dir: str, block_size: int = 64 << 10) -> dict[str, Any]:
    """Build a kernel pool from sequence ``seed``; hash its devices; remove it (a final commit);
    ``thin_dump`` its metadata to ``out_dir/kernel.xml`` and copy its data file to ``out_dir/data``."""
    plan = plan_for(block_size)
    work = _workdir(f"dump-{seed}")
    kp = KernelPool.create(work, data_size=plan.data_size, block_size=block_size, name=f"lkdump{seed}")
    errors = {}
    try:
        for i, op in enumerate(generate(seed, n_ops)):
            err = apply_op(kp, seed, i, op)
            if err:
                errors[str(i)] = err
        ls, _xml = kp.inspect()
        sizes = dict(kp.sizes)
        hashes = {str(d): kp.block_hashes(d) for d in sorted(sizes)}
        meta_dev = kp.meta_dev
        for dev in sorted(sizes):
            kp.deactivate(dev)
        dm.remove(kp.pool)  # commits the metadata
        with open(os.path.join(out_dir, "kernel.xml"), "w") as f:
            subprocess.run(["thin_dump", meta_dev], stdout=f, check=True)
        loop.detach(kp.data_dev)
        kp.data_dev = ""
        written = _sparse_copy(os.path.join(work, "data"), os.path.join(out_dir, "data"))
    finally:
        kp.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"seed": seed, "sizes": {str(d): s for d, s in sizes.items()}, "hashes": hashes,
            "thin_ls": {str(k): v for k, v in ls.items()}, "errors": errors, "data_bytes_copied": written,
            "block_size": block_size}


_WRITER = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)
b = mmap.mmap(-1, 65536); b[:] = b"\\xab" * 65536
off, end = 0, int(sys.argv[2])
while off < end:
    try:
        os.pwritev(fd, [b], off)
    except OSError as e:
        print("error", off, e.errno, flush=True); sys.exit(1)
    off += 65536
    print("ok", off, flush=True)
"""


def fill(error_if_no_space: bool, data_size: int = 4 << 20, block_size: int = 64 << 10) -> dict[str, Any]:
    """Write 1 MiB more than the pool holds, 64 KiB at a time (O_DIRECT), in a child process. With
    ``error_if_no_space`` the write past the end fails at once; with queueing it blocks, and growing
    the data device (what an administrator would do) lets it finish."""
    work = _workdir("fill")
    kp = KernelPool.create(work, data_size=data_size, block_size=block_size, name="lkfill",
                           error_if_no_space=error_if_no_space)
    result: dict[str, Any] = {"mode": "error_if_no_space" if error_if_no_space else "queue_if_no_space"}
    try:
        kp.create_thin(1, 4 * data_size)
        path = kp.activate_dev(1, 4 * data_size)
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, path, str(data_size + (1 << 20))],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        written, outcome, errno_ = 0, "finished", None
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 10.0)
                if not ready:  # slow (emulation), or held by the full pool: its status tells (twice, to be sure)
                    full = "out_of_data_space" in kp.status()
                    if full and outcome == "quiet":
                        outcome = "blocked"
                        break
                    outcome = "quiet" if full else "finished"
                    continue
                outcome = "finished"
                line = proc.stdout.readline()
                if not line:
                    break
                word, *rest = line.split()
                if word == "ok":
                    written = int(rest[0])
                else:
                    outcome, errno_ = "error", int(rest[1])
                    break
            result.update(bytes_written=written, outcome=outcome, errno=errno_, status=kp.status())
            if outcome == "blocked":  # grow the data device: the queued write completes
                with open(os.path.join(work, "data"), "r+b") as f:
                    f.truncate(data_size + (2 << 20))
                fd = os.open(kp.data_dev, os.O_RDONLY)
                try:
                    fcntl.ioctl(fd, LOOP_SET_CAPACITY, 0)   # losetup -c: the loop device takes the new size
                finally:
                    os.close(fd)
                kp.load_pool()
                proc.wait(timeout=120)
                for line in proc.stdout.read().split("\n"):
                    if line.startswith("ok"):
                        written = int(line.split()[1])
                result.update(after_grow_bytes_written=written, after_grow_exit=proc.returncode)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        result["status_after"] = kp.status()
    finally:
        kp.close()
        shutil.rmtree(work, ignore_errors=True)
    return result


JOBS: dict[str, Callable[..., Any]] = {"replay": replay, "read_restored": read_restored, "dump_built": dump_built,
                                       "fill": fill, "kernel_info": kernel_info}
