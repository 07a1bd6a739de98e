"""Experiment ``thin-io``: I/O through a thin device (FUSE + loop + ext4) against a plain loop file.

Both targets are ext4 on a loop device on the same disk, set up together and measured **in turn** (each
repetition runs every op on both, the order alternating), so a ratio thin/loop is taken per repetition
from two runs seconds apart: paired A/B under the same load. ``thin`` is a thin snapshot of labkit's pool
(its device file served by the FUSE daemon), ``loop`` a sparse file. Ops:

* ``seq_write``: a file of ``file_size`` written in 1 MiB writes, then fsync (data reaches the device);
* ``seq_read``: the same file read in 1 MiB ``O_DIRECT`` reads (no ext4 page cache: every read reaches
  the loop device);
* ``rand_write_4k``: ``random_ops`` 4 KiB ``O_DIRECT`` writes at random aligned offsets in that file, then
  fsync.

``cold=True`` syncs and drops the page cache (``/proc/sys/vm/drop_caches``) before every op, so reads come
from the disk on both targets; the default leaves the caches warm (the loop file's and the thin export's).

Columns: ``target, op, repeat, warmup, bytes, seconds, mib_per_s, load_1m, cold, backing_folio_kib`` plus
the host columns. :func:`ratios` gives the medians and the paired ratio with its spread.

``backing_folio_kib`` is the size of the page-cache folios (page-weighted median, KiB) that the target's
loop device reads from at the end of the run: the plain loop file's (ext4 caches a regular file in large
folios since Linux 6.16: 256 KiB-1 MiB here) and the thin device file's (FUSE's page cache: 4 KiB pages
on 6.18, with and without writeback caching). With warm caches a ``seq_read`` is the loop device copying
from that cache, and the per-folio work of the copy is what keeps thin's reads at ~0.75-0.85x the plain
file's (docs/thin-pool.md, "Performance of the FUSE export"). :func:`cached_folio_sizes` measures it.

>>> df = run(root="/var/tmp/lk-io", file_size="64M", repeat=5)          # doctest: +SKIP
>>> ratios(df)                                                          # doctest: +SKIP
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import random
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, cast

import pandas as pd

from .._sys import loop, mounts
from .._sys.fs import run as run_tool
from .._sys.libc import libc
from ..snapshots import open_snapshotter
from ..snapshots.mount import unmount
from ..units import parse_size
from .framework import Context, Param, experiment
from .host import environment

OPS = ("seq_write", "seq_read", "rand_write_4k")
MIB = 1 << 20


PAGE = mmap.PAGESIZE
KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 15, 16      # /proc/kpageflags bits (Documentation/admin-guide/mm/pagemap.rst)
_libc = libc        # (argument types for the three calls below, which nothing else in labkit makes)
_libc.mmap.restype, _libc.mmap.argtypes = ctypes.c_void_p, (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                           ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)


def cached_folio_sizes(path: str) -> dict[int, int]:
    """How the kernel caches ``path`` now: folio size in bytes -> pages of the file cached in folios of
    that size. Only pages already cached are looked at (``mincore`` first), so nothing is read from the
    file. Needs root (``/proc/self/pagemap`` gives page frame numbers only to CAP_SYS_ADMIN,
    ``/proc/kpageflags`` is root's); OSError otherwise.

    >>> cached_folio_sizes("/var/tmp/lk-io/plain.img")      # doctest: +SKIP
    {4096: 84, 262144: 12416, 524288: 28800, 1048576: 24320}
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        npages = os.fstat(fd).st_size // PAGE
        if npages == 0:
            return {}
        length = npages * PAGE
        addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap", path)
    finally:
        os.close(fd)
    try:
        vec = ctypes.create_string_buffer(npages)
        if _libc.mincore(addr, length, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore", path)
        cached = [i for i, b in enumerate(vec.raw) if b & 1]
        for i in cached:                 # map the cached pages (a fault each, no I/O) so pagemap shows them
            ctypes.string_at(addr + i * PAGE, 1)
        with open("/proc/self/pagemap", "rb", buffering=0) as pm:
            pm.seek(addr // PAGE * 8)
            got = bytearray()
            while len(got) < npages * 8 and (chunk := pm.read(npages * 8 - len(got))):
                got += chunk
        entries = struct.unpack(f"{len(got) // 8}Q", got[:len(got) // 8 * 8])
    finally:
        _libc.munmap(addr, length)
    pfns = [(i, entries[i] & ((1 << 55) - 1)) for i in cached if i < len(entries) and entries[i] >> 63]
    if pfns and not any(pfn for _, pfn in pfns):
        raise OSError(errno.EPERM, "/proc/self/pagemap hides page frame numbers (needs CAP_SYS_ADMIN)", path)
    sizes: dict[int, int] = {}
    run = 0                              # pages of the folio being counted

    def close_run() -> None:
        if run:
            sizes[run * PAGE] = sizes.get(run * PAGE, 0) + run

    kf = os.open("/proc/kpageflags", os.O_RDONLY | os.O_CLOEXEC)
    try:
        j = 0
        while j < len(pfns):             # read the flags of runs of consecutive frames in one go
            k = j + 1
            while k < len(pfns) and pfns[k][1] == pfns[k - 1][1] + 1 and pfns[k][0] == pfns[k - 1][0] + 1:
                k += 1
            raw = os.pread(kf, (k - j) * 8, pfns[j][1] * 8)
            for flags in struct.unpack(f"{len(raw) // 8}Q", raw):
                if flags >> KPF_COMPOUND_TAIL & 1 and run:
                    run += 1
                    continue
                close_run()
                run = 1
                if not flags >> KPF_COMPOUND_HEAD & 1:
                    close_run()
                    run = 0
            j = k
    finally:
        os.close(kf)
    close_run()
    return dict(sorted(sizes.items()))


def _folio_kib(path: str) -> float:
    """Page-weighted median folio size of ``path``'s cached pages, KiB (NaN when it cannot be read).

    >>> _folio_kib("/nonexistent")
    nan
    """
    try:
        sizes = cached_folio_sizes(path)
    except OSError:
        return float("nan")
    half, seen = sum(sizes.values()) / 2, 0
    for size, pages in sizes.items():
        seen += pages
        if seen >= half:
            return size / 1024
    return float("nan")


def _loop_backing(target: str) -> str | None:
    """The backing file of the loop device mounted at ``target``."""
    for m in mounts.mountinfo():
        if m.target == target and m.source.startswith("/dev/loop"):
            for lp in loop.list_loops():
                if lp.dev == m.source:
                    return lp.backing_file
    return None


@contextmanager
def _thin_target(base: str, size: int) -> Iterator[str]:
    sn = open_snapshotter("thin", os.path.join(base, "thin"), data_size=max(4 * size, 1 << 30),
                          base_size=max(2 * size, 256 * MIB))
    target = os.path.join(base, "thin-mnt")
    os.mkdir(target)
    try:
        with sn.prepare("io").mount(target):
            yield target
    finally:
        try:
            sn.remove("io")
        finally:
            sn.close()


@contextmanager
def _loop_target(base: str, size: int) -> Iterator[str]:
    image = os.path.join(base, "plain.img")
    with open(image, "wb") as f:
        f.truncate(max(2 * size, 256 * MIB))
    run_tool(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", image],
             f"loop file {image}")
    target = os.path.join(base, "loop-mnt")
    os.mkdir(target)
    dev = loop.attach(image, name="labkit-bench-loop")
    try:
        mounts.mount(dev, target, "ext4", 0, "noinit_itable")   # as thin mounts: no background zeroing
        loop.set_autoclear(dev)
    except BaseException:
        loop.detach(dev)
        raise
    try:
        yield target
    finally:
        unmount(target)


def _seq_write(path: str, size: int, block: bytes) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(0, size, MIB):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def _seq_read(path: str, size: int) -> float:
    buf = mmap.mmap(-1, MIB)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        while os.readv(fd, [buf]) > 0:
            pass
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def _rand_write(path: str, size: int, n: int, rng: random.Random) -> float:
    buf = mmap.mmap(-1, 4096)
    buf.write(rng.randbytes(4096))
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(n)]
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        for off in offsets:
            os.pwritev(fd, [buf], off)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def _load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run(*, root: str, file_size: int | str = "256M", random_ops: int = 4000, repeat: int = 5,
        cold: bool = False, progress: bool = True) -> pd.DataFrame:
    """Measure every op on both targets ``repeat`` times after one warm-up, the targets in turn; returns
    the tidy DataFrame."""
    size = parse_size(file_size, what="file_size") // MIB * MIB
    os.makedirs(root, exist_ok=True)
    env = environment(root)
    host = {k: env[k] for k in ("kernel", "store_fs", "labkit_version", "cpu_model")}
    rng = random.Random(42)
    block = rng.randbytes(MIB)
    rows = []
    from tqdm.auto import tqdm
    bar = tqdm(total=2 * (repeat + 1) * len(OPS), disable=not progress, unit="op", leave=False)
    base = tempfile.mkdtemp(prefix="thin-io-", dir=root)
    try:
        with ExitStack() as stack:
            targets = {"loop": stack.enter_context(_loop_target(base, size)),
                       "thin": stack.enter_context(_thin_target(base, size))}
            for r in range(repeat + 1):
                for i, op in enumerate(OPS):
                    order = ["loop", "thin"] if (r + i) % 2 == 0 else ["thin", "loop"]
                    for name in order:
                        bar.set_description(f"{name} {op}")
                        path = os.path.join(targets[name], "file")
                        if cold:
                            _drop_caches()
                        if op == "seq_write":
                            secs, nbytes = _seq_write(path, size, block), size
                        elif op == "seq_read":
                            secs, nbytes = _seq_read(path, size), size
                        else:
                            secs, nbytes = _rand_write(path, size, random_ops, rng), random_ops * 4096
                        rows.append({"target": name, "op": op, "repeat": r, "warmup": r == 0, "bytes": nbytes,
                                     "seconds": secs, "mib_per_s": nbytes / MIB / secs, "load_1m": _load(),
                                     "cold": cold, **host})
                        bar.update(1)
            # what each loop device reads from (before teardown drops it): see the module's docstring
            folio_kib = {name: _folio_kib(_loop_backing(t) or "") for name, t in targets.items()}
            for row in rows:
                row["backing_folio_kib"] = folio_kib[row["target"]]
    finally:
        bar.close()
        shutil.rmtree(base, ignore_errors=True)
    return pd.DataFrame(rows)


def ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Per op: median MiB/s of each target and the ratio thin/loop, taken per repetition (paired) and
    summarised by its median, 25 % and 75 % quantiles, minimum and maximum (warm-up dropped), the
    median load average and, when measured, each target's page-cache folio size (``folio_kib_thin``,
    ``folio_kib_loop``)."""
    d = df[~df.warmup]
    keys = ["op", *(c for c in ("file_size", "cold") if c in d.columns and d[c].nunique() > 1)]
    out = d.groupby([*keys, "target"]).mib_per_s.median().unstack("target")
    wide = d.pivot_table(index=[*keys, "repeat"], columns="target", values="mib_per_s")
    r = (wide["thin"] / wide["loop"]).groupby(level=keys)
    out["thin_vs_loop"] = r.median()
    out["ratio_25%"], out["ratio_75%"] = r.quantile(0.25), r.quantile(0.75)
    out["ratio_min"], out["ratio_max"] = r.min(), r.max()
    out["runs"] = r.count()
    out["load_1m"] = d.groupby(keys).load_1m.median() if "load_1m" in d else float("nan")
    if "backing_folio_kib" in d:
        folio = d.groupby("target").backing_folio_kib.median()
        for target in ("thin", "loop"):
            out[f"folio_kib_{target}"] = folio.get(target, float("nan"))
    if keys == ["op"]:
        out = out.reindex([o for o in OPS if o in out.index])
    return out


@experiment("thin-io", title="I/O through a thin device (FUSE + loop + ext4) vs a plain loop file",
            params=[Param("file_size", "size", "256M", "file written and read"),
                    Param("random_ops", "int", 4000, "4 KiB random writes", min=1),
                    Param("cold", "bool", False, "drop the page cache before every op (reads from disk)")],
            columns={"target": "thin or loop", "op": "seq_write, seq_read, rand_write_4k", "mib_per_s": "throughput",
                     "load_1m": "load average after the op",
                     "backing_folio_kib": "page-cache folio size the loop device reads from (median, KiB)"},
            trials_per_case=lambda p: 6, summary=ratios)
def thin_io_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """The whole comparison is one case (both targets in the same run, measured in turn)."""
    df = run(root=ctx.root, file_size=p["file_size"], random_ops=p["random_ops"], repeat=repeat,
             cold=p["cold"], progress=False)
    ctx.tick(6 * (repeat + 1))
    keep = ["target", "op", "repeat", "bytes", "seconds", "mib_per_s", "load_1m", "backing_folio_kib"]
    return cast("list[dict[str, Any]]", df[keep].to_dict("records"))   # column names are str
