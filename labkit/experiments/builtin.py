"""The built-in experiments, registered with :func:`labkit.experiments.framework.experiment`.

Each case function measures one point of its grid through the public snapshot API (or the thin pool's),
the same one notebooks use. Columns are documented in docs/experiments.md.

>>> from labkit.experiments.framework import names
>>> "snapshot-time" in names() and "space-vs-containers" in names()
True
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ..snapshots import BaseSnapshotter, backend_names, open_snapshotter
from .._sys.fs import tree_usage
from .fill import fill_tree
from .framework import Context, Param, experiment

BACKENDS = tuple(b for b in backend_names() if b != "dmthin")
MIB = 1 << 20


def backend_param(default: Any = ("copy", "overlay", "btrfs", "reflink", "thin")) -> Param:
    return Param("backend", "choice", list(default), "snapshot backends to compare", choices=BACKENDS, sweep=True)


def backend_options(backend: str, largest: int) -> dict[str, Any]:
    """Store options big enough for an experiment whose largest image is ``largest`` bytes."""
    if backend in ("btrfs", "reflink"):
        return {"loop_size": max(3 * largest + (1 << 30), 2 << 30)}
    if backend == "thin":
        return {"data_size": max(4 * largest + (1 << 30), 2 << 30), "base_size": max(4 * largest, 1 << 30)}
    return {}


@contextmanager
def scratch_store(ctx: Context, backend: str, largest: int, **extra: Any) -> Iterator[tuple[BaseSnapshotter, str]]:
    """A fresh store for one case and a mount target; everything is removed afterwards."""
    base = tempfile.mkdtemp(prefix=f"{backend}-", dir=ctx.root)
    sn = open_snapshotter(backend, os.path.join(base, "store"), **{**backend_options(backend, largest), **extra})
    target = os.path.join(base, "rootfs")
    os.mkdir(target)
    try:
        yield sn, target
    finally:
        _discard_store(sn, base)


def _discard_store(sn: BaseSnapshotter, base: str) -> None:
    """Remove every snapshot (children first: walk is oldest first), close, delete the scratch dir."""
    try:
        for info in reversed(list(sn.walk())):
            sn.remove(info.name)
    finally:
        sn.close()
        shutil.rmtree(base, ignore_errors=True)


def make_image(sn: BaseSnapshotter, target: str, name: str, size: int, *, seed: int = 0,
               one_file: bool = False) -> int:
    """Commit an image of ``size`` bytes (realistic files, or one big file); returns the file count."""
    with sn.prepare(name + "-build").mount(target):
        if one_file:
            _write_file(os.path.join(target, "big"), size, seed)
            files = 1
        else:
            files = fill_tree(target, size, seed=seed)
    sn.commit(name, name + "-build")
    os.sync()
    return files


def _write_file(path: str, size: int, seed: int) -> None:
    block = random.Random(seed).randbytes(MIB)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, MIB)])
            left -= MIB
        os.fsync(f.fileno())


def store_bytes(sn: BaseSnapshotter) -> int:
    """Bytes the store really occupies: pool blocks (thin), filesystem blocks (loop-file btrfs/xfs), or
    allocated bytes of the snapshot directories (copy, overlay)."""
    if sn.name == "thin":
        st = sn.client.call("status")  # type: ignore[attr-defined]
        return st["used_data_blocks"] * _thin_block(sn)
    loopfs = getattr(sn, "loopfs", None)
    if loopfs is not None:
        fd = os.open(loopfs.mountpoint, os.O_RDONLY)
        try:
            os.fsync(fd)
            if sn.name == "btrfs":
                import subprocess
                subprocess.run(["btrfs", "filesystem", "sync", loopfs.mountpoint], capture_output=True)
            st = os.fstatvfs(fd)
        finally:
            os.close(fd)
        return (st.f_blocks - st.f_bfree) * st.f_frsize
    return tree_usage(sn.storage).size


def _thin_block(sn: BaseSnapshotter) -> int:
    from ..units import parse_size
    return parse_size(sn.block_size)  # type: ignore[attr-defined]


def _snapshot_summary(df):
    from .snapshot_time import medians
    return medians(df)


def _median(df, by, value):
    d = df[~df.warmup]
    return d.groupby(by)[value].median().unstack(by[-1]) if len(by) > 1 else d.groupby(by)[value].median().to_frame()


# ---- 1. snapshot-time ---------------------------------------------------------------------------------
@experiment("snapshot-time", title="time of each snapshot phase against image size",
            params=[backend_param(), Param("size", "size", ["16M", "256M", "1G"], "image size", sweep=True)],
            columns={"parent_bytes": "bytes of the image", "files": "files in the image",
                     "phase": "prepare, mount, first_write, unmount, commit, remove", "seconds": "wall time"},
            summary=lambda df: _snapshot_summary(df))
def snapshot_time_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    from .snapshot_time import _trial
    rows = []
    with scratch_store(ctx, p["backend"], p["size"]) as (sn, target):
        files = make_image(sn, target, "image", p["size"], seed=p["size"])
        for r in range(repeat + 1):
            for phase, seconds in _trial(sn, "image", f"c{r}", target):
                rows.append({"parent_bytes": p["size"], "files": files, "phase": phase, "repeat": r,
                             "seconds": seconds})
            ctx.tick(1)
    return rows


# ---- 2. space-vs-containers ---------------------------------------------------------------------------
@experiment("space-vs-containers", title="store space as containers of one image write data",
            params=[backend_param(), Param("containers", "int", 8, "containers started from the image", min=1, max=200),
                    Param("write", "size", "4M", "bytes each container writes"),
                    Param("image_size", "size", "64M", "image size")],
            columns={"containers": "containers running so far", "bytes_used": "bytes the store occupies",
                     "bytes_added": "bytes_used minus the image alone", "bytes_exclusive": "sum of containers' usage"},
            trials_per_case=lambda p: p["containers"],
            summary=lambda df: _median(df[df.containers == df.containers.max()], ["backend"], "bytes_added"))
def space_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    rows = []
    for r in range(repeat + 1):
        with scratch_store(ctx, p["backend"], p["image_size"] + p["containers"] * p["write"]) as (sn, target):
            make_image(sn, target, "image", p["image_size"], seed=1)
            before = store_bytes(sn)
            rows.append({"containers": 0, "repeat": r, "bytes_used": before, "bytes_added": 0, "bytes_exclusive": 0})
            excl = 0
            for n in range(1, p["containers"] + 1):
                key = f"c{n}"
                with sn.prepare(key, "image").mount(target):
                    _write_file(os.path.join(target, "data"), p["write"], seed=n)
                excl += sn.usage(key).size
                used = store_bytes(sn)
                rows.append({"containers": n, "repeat": r, "bytes_used": used, "bytes_added": used - before,
                             "bytes_exclusive": excl})
                ctx.tick(1)
    return rows


# ---- 3. cow-penalty -----------------------------------------------------------------------------------
@experiment("cow-penalty", title="first write into inherited data vs a rewrite, by write size",
            params=[backend_param(("overlay", "btrfs", "reflink", "thin", "copy")),
                    Param("write", "size", ["4K", "64K", "1M"], "bytes written into the inherited file", sweep=True),
                    Param("file_size", "size", "256M", "size of the inherited file")],
            columns={"phase": "first_write (breaks sharing) or rewrite (already private)",
                     "write_bytes": "bytes written", "seconds": "pwrite + fsync"},
            summary=lambda df: _median(df, ["backend", "write_bytes", "phase"], "seconds"))
def cow_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
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


# ---- 4. commit-cost -----------------------------------------------------------------------------------
@experiment("commit-cost", title="commit time and bytes added against the amount a container changed",
            params=[backend_param(), Param("changed", "size", ["1M", "16M", "128M"], "bytes the container writes", sweep=True),
                    Param("image_size", "size", "64M", "image size")],
            columns={"changed_bytes": "bytes written", "seconds": "commit time", "bytes_added": "usage of the new image"},
            summary=lambda df: _median(df, ["backend", "changed_bytes"], "seconds"))
def commit_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    rows = []
    with scratch_store(ctx, p["backend"], p["image_size"] + (repeat + 1) * p["changed"]) as (sn, target):
        make_image(sn, target, "image", p["image_size"], seed=3)
        for r in range(repeat + 1):
            key = f"c{r}"
            with sn.prepare(key, "image").mount(target):
                fill_tree(os.path.join(target), p["changed"], seed=100 + r)
            t0 = time.perf_counter()
            sn.commit(f"img{r}", key)
            secs = time.perf_counter() - t0
            rows.append({"changed_bytes": p["changed"], "repeat": r, "seconds": secs,
                         "bytes_added": sn.usage(f"img{r}").size})
            sn.remove(f"img{r}")
            ctx.tick(1)
    return rows


# ---- 6. block-size ------------------------------------------------------------------------------------
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
    from ..thin.pool import Pool
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
                rows.append({"block_bytes": bs, "repeat": r, "writes": p["writes"], "seconds_per_write": secs / p["writes"],
                             "bytes_exclusive": u.exclusive_blocks * bs, "metadata_blocks": st.used_metadata_blocks,
                             "data_blocks": st.used_data_blocks, "bytes_used": st.used_data_blocks * bs})
        finally:
            shutil.rmtree(base, ignore_errors=True)
        ctx.tick(1)
    return rows


# ---- 7. pool-exhaustion -------------------------------------------------------------------------------
@experiment("pool-exhaustion", title="over-committed thin devices filled until ENOSPC; the image stays intact",
            params=[Param("pool_size", "size", "192M", "thin pool data size"),
                    Param("containers", "int", 3, "containers writing at once", min=1, max=20),
                    Param("image_size", "size", "16M", "image size")],
            columns={"container": "which container", "bytes_written": "bytes it wrote before the error",
                     "error": "what the writer saw", "image_intact": "image checksum unchanged afterwards",
                     "pool_used_bytes": "pool data in use at the end", "overcommit": "sum of virtual sizes / pool"},
            summary=lambda df: df[~df.warmup].groupby("repeat").agg(
                bytes_written=("bytes_written", "sum"), image_intact=("image_intact", "all"),
                pool_ok_after=("pool_ok_after", "all")))
def exhaustion_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    rows = []
    for r in range(repeat + 1):
        base = tempfile.mkdtemp(prefix="exhaust-", dir=ctx.root)
        sn = open_snapshotter("thin", os.path.join(base, "store"), data_size=p["pool_size"], base_size="1G")
        targets = []
        try:
            target = os.path.join(base, "img")
            os.mkdir(target)
            make_image(sn, target, "image", p["image_size"], seed=5)
            with sn.view("check", "image").mount(target):
                before = _digest(target)
            sn.remove("check")
            handles, written, error = [], [0] * p["containers"], [""] * p["containers"]
            for i in range(p["containers"]):
                t = os.path.join(base, f"c{i}")
                os.mkdir(t)
                handles.append(sn.prepare(f"c{i}", "image").mount(t))
                targets.append(t)
            files = [open(os.path.join(t, "fill"), "wb") for t in targets]
            block = random.Random(r).randbytes(MIB)
            live = set(range(p["containers"]))
            while live:
                for i in sorted(live):
                    try:
                        files[i].write(block)
                        files[i].flush()
                        os.fsync(files[i].fileno())
                        written[i] += MIB
                    except OSError as e:
                        error[i] = os.strerror(e.errno) if e.errno else str(e)
                        live.discard(i)
                    if written[i] > 4 * p["pool_size"]:
                        live.discard(i)
            for f in files:
                try:
                    f.close()
                except OSError:
                    pass
            for h in handles:
                h.unmount()
            used = sn.client.call("status")["used_data_blocks"] * _thin_block(sn)  # type: ignore[attr-defined]
            for i in range(p["containers"]):
                sn.remove(f"c{i}")
            with sn.view("check", "image").mount(target):
                intact = _digest(target) == before
            sn.remove("check")
            over = (p["containers"] + 2) * (1 << 30) / p["pool_size"]
            for i in range(p["containers"]):
                rows.append({"container": i, "repeat": r, "bytes_written": written[i], "error": error[i],
                             "image_intact": intact, "pool_used_bytes": used, "overcommit": over,
                             "pool_ok_after": bool(sn.client.call("check")["ok"])})
        finally:
            _discard_store(sn, base)
        ctx.tick(1)
    return rows


def _digest(path: str) -> str:
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(name.encode())
                h.update(f.read())
    return h.hexdigest()


def _thin_io_summary(df):
    from .thin_io import ratios
    return ratios(df)


# ---- thin-io ------------------------------------------------------------------------------------------
@experiment("thin-io", title="I/O through a thin device (FUSE + loop + ext4) vs a plain loop file",
            params=[Param("file_size", "size", "256M", "file written and read"),
                    Param("random_ops", "int", 4000, "4 KiB random writes", min=1)],
            columns={"target": "thin or loop", "op": "seq_write, seq_read, rand_write_4k", "mib_per_s": "throughput"},
            trials_per_case=lambda p: 6, summary=lambda df: _thin_io_summary(df))
def thin_io_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    from . import thin_io
    df = thin_io.run(root=ctx.root, file_size=p["file_size"], random_ops=p["random_ops"], repeat=repeat,
                     progress=False)
    ctx.tick(6 * (repeat + 1))
    keep = ["target", "op", "repeat", "bytes", "seconds", "mib_per_s"]
    return df[keep].to_dict("records")


# ---- 5. start-latency ---------------------------------------------------------------------------------
@experiment("start-latency", title="container start-to-exit of /bin/true: labkit vs runc (and crun)",
            params=[Param("runtimes", "choice", ["labkit", "runc", "crun"], "runtimes to compare",
                          choices=("labkit", "runc", "crun"), sweep=True)],
            columns={"runtime": "labkit, runc or crun", "seconds": "start to exit of /bin/true"},
            trials_per_case=lambda p: 1, whole_list=("runtimes",),
            summary=lambda df: df[~df.warmup].groupby("runtime").seconds.describe()[["count", "25%", "50%", "75%"]])
def start_latency_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """One case for all runtimes (they share the rootfs and the bundle): a busybox rootfs in a scratch dir."""
    from ..containers.bench import start_latency
    from ..images.busybox import build_busybox_rootfs
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


# ---- 8. image-sprawl ----------------------------------------------------------------------------------
@experiment("image-sprawl", title="a chain of ad-hoc commits vs the same result recorded once; what prune reclaims",
            params=[backend_param(("overlay", "thin", "copy")),
                    Param("steps", "int", 5, "ad-hoc commits in the chain", min=1, max=50),
                    Param("write", "size", "1M", "bytes each step writes")],
            columns={"approach": "chain (one commit per step) or once (one commit of everything)",
                     "images": "images the approach left", "bytes_total": "the result's size above the base: its layer and its ancestors' (df total)",
                     "bytes_freed": "what prune reclaimed once the result was untagged"},
            summary=lambda df: _median(df, ["backend", "approach"], "bytes_total"))
def sprawl_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    from ..lab import Lab
    rows = []
    for r in range(repeat + 1):
        base = tempfile.mkdtemp(prefix="sprawl-", dir=ctx.root)
        lab = Lab(base, p["backend"], **backend_options(p["backend"], 64 * MIB + p["steps"] * p["write"] * 2))
        try:
            lab.import_image("busybox", tag="busybox")
            count = p["write"] // 4096
            for approach in ("chain", "once"):
                image, made = "busybox", []
                steps = range(p["steps"]) if approach == "chain" else [None]
                for i in steps:
                    # each ad-hoc step rewrites the same file (an edited config, an upgraded package):
                    # the chain keeps every version, the single commit only the last
                    cmd = f"dd if=/dev/urandom of=/data bs=4k count={count} 2>/dev/null; echo {i} > /step"
                    c = lab.run(image, ["sh", "-c", cmd], name=f"{approach}{i}")
                    image = lab.commit(c, None)
                    c.remove()
                    made.append(image[:12])
                lab.store.tag(image, f"{approach}:result")
                df = lab.df().set_index("name")
                total = int(df.loc[made[-1], "total"] - df.loc[lab.store.resolve("busybox")[:12], "total"])
                lab.store.untag(f"{approach}:result")
                freed = lab.store.prune()
                rows.append({"approach": approach, "repeat": r, "images": len(made), "bytes_total": total,
                             "bytes_freed": int(freed["freed"]), "deleted": len(freed["deleted"])})
        finally:
            lab.close()
            shutil.rmtree(base, ignore_errors=True)
        ctx.tick(1)
    return rows
