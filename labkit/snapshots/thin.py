"""The ``thin`` backend: Docker's devicemapper design on labkit's userspace thin pool.

Each snapshot is a thin device of one pool (:mod:`labkit.thin`): a **base device** holds an empty ext4
(``base_size``, default 10 GiB virtual, like ``dm.basesize``); ``prepare`` takes a thin snapshot of the
parent's device (or of the base) — no per-block work, so it costs the same for any image size — and
hands back an ``ext4`` mount of it through a loop device over the daemon's FUSE file; ``commit`` just
declares the active device committed; ``remove`` deletes the device and its exclusive blocks go back to
the pool. A view is a snapshot mounted read-only.

Layout under the backend root: ``pool/`` (data, metadata, ``ctl/`` with the daemon's socket, its log),
``dev/`` (the FUSE mount: one file per device) and ``thin.lock`` (taken while a store is set up). Device ids
are the snapshots' metadata ids; the base is 0. A device left by a process that died between creating it
and committing its snapshot row (whose id is then reused) is found and deleted by the next ``prepare``.

The pool's daemon is shared by every process using the store and outlives them while devices are mounted;
``close()`` lets go of this process's loop devices and never waits for the daemon (see
:mod:`labkit.thin.client`).

Usage is exact at the block level: the pool's exclusive blocks of the device times the block size
(thin_ls's EXCLUSIVE_BLOCKS). Inodes are not visible at the block layer; ``inodes`` is the number of
inodes the snapshot's ext4 uses beyond its parent's (statfs while mounted, the superblock otherwise).

>>> sn = open_snapshotter("thin", "/tmp/lk-thin", data_size="4G")     # doctest: +SKIP
>>> sn.prepare("c1").source                                            # doctest: +SKIP
'/dev/loop3'
"""
from __future__ import annotations

import ctypes
import fcntl
import importlib.util
import json
import os
from typing import TYPE_CHECKING, Any

from .. import errors
from .._sys import mounts as sysmount
from .._sys.fs import make_base_ext4, require_binary
from .._sys.libc import check, libc
from .._sys.probe import has_filesystem, is_root
from ..thin.client import PoolClient, drop_prestart, prestart, store_paths
from ..units import parse_size
from .base import BaseSnapshotter, Kind, Mount, Row, Usage
from .capabilities import SnapshotBlock, StoreSpace

if TYPE_CHECKING:  # a `labkit run` talks to the daemon only: the pool, its checker and records load on use
    import logging

    from ..thin.check import CheckReport
    from ..thin.records import Status

BASE_DEV = 0


def _log() -> logging.Logger:
    """The backend's logger, imported when something is logged (``logging`` registers an ``atexit``
    callback, which keeps a CLI process from ending at once: docs/performance.md)."""
    import logging
    return logging.getLogger("labkit.snapshots.thin")


def _fuse_reason() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse: modprobe fuse (in a container: --device /dev/fuse)"
    if not has_filesystem("fuse"):
        return "the kernel has no FUSE: modprobe fuse"
    # without importing mfusepy (its search for libfuse runs ldconfig and gcc: 100-200 ms of a CLI's start)
    try:
        if importlib.util.find_spec("mfusepy") is None:
            raise ImportError("mfusepy")
        ctypes.CDLL(os.environ.get("FUSE_LIBRARY_PATH") or "libfuse3.so.3")
    except (ImportError, OSError, ValueError):
        return "needs libfuse3 and mfusepy: apt-get install fuse3 libfuse3-3; pip install mfusepy"
    return None


class ThinSnapshotter(BaseSnapshotter):
    """Thin-provisioned snapshots of an ext4 base device (Docker devicemapper) on labkit's userspace pool."""

    name = "thin"

    def __init__(self, root: str | os.PathLike[str], *, data_size: int | str = "20G", block_size: int | str = "64K",
                 base_size: int | str = "10G", mount_options: str = "", idle: float = 2.0) -> None:
        self.data_size = parse_size(data_size, what="thin pool data_size")
        self.block_size = block_size
        self.base_size = parse_size(base_size, what="thin base_size")
        if self.base_size < (64 << 20):
            raise errors.InvalidArgument(f"thin base_size {base_size!r}", "is below 64 MiB", fix="give e.g. '10G'")
        self.mount_options = mount_options
        self.idle = idle
        self.client: PoolClient | None = None
        self._block_bytes = parse_size(block_size, what="thin pool block_size")
        super().__init__(root)

    @classmethod
    def prestart(cls, root: str) -> bool:
        """Fork the pool's daemon of the store at ``root`` now and return at once (the ability
        :class:`~labkit.snapshots.capabilities.Prestarting`; the CLI calls it before it imports the rest,
        so the daemon's ~45 ms start overlaps that); opening the store in this process takes it over.
        False when there is no pool yet, a daemon runs, another process starts one, or this process has
        threads."""
        return prestart(*store_paths(str(root)))

    @classmethod
    def drop_prestart(cls, root: str) -> None:
        """Stop a daemon :meth:`prestart` began for ``root`` that no open took over."""
        drop_prestart(store_paths(str(root))[0])

    @classmethod
    def supported(cls, root: str) -> str | None:
        if not is_root():
            return "needs root for loop devices and mounts: run as root"
        return _fuse_reason() or require_binary("mkfs.ext4", "e2fsprogs")

    # -- pool and base device -------------------------------------------------------------------
    def _open(self) -> None:
        pool_path, mountpoint = store_paths(self.root)
        client = PoolClient(pool_path, mountpoint, idle=self.idle)
        if os.path.exists(os.path.join(pool_path, "metadata")):
            # connect before taking thin.lock: a CLI that prestarted the daemon holds the pool's start lock
            # until it takes the daemon over here, and a second process that holds thin.lock while it
            # waits for that start lock would wait for the first, which waits for thin.lock (20 s, then a
            # "does not finish" error: seen with two processes on one store)
            try:
                client.connect()
            except BaseException:
                client.close()
                raise
        # two processes opening a new store at once: one makes the pool and the base device, the other waits
        lock = os.open(os.path.join(self.root, "thin.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(os.path.join(pool_path, "metadata")):
                from ..thin.pool import Pool  # only to make a new pool; the daemon owns an existing one
                Pool.create(pool_path, data_size=self.data_size, block_size=self.block_size).close()
            self.client = client
            if BASE_DEV not in client.devices():
                self._make_base()
            self._block_bytes = client.block_size  # the pool's own, whatever this opener was given
        except BaseException:
            self.client = None
            client.close()
            raise
        finally:
            os.close(lock)

    def _pool(self) -> PoolClient:
        if self.client is None:
            raise errors.FailedPrecondition(f"thin snapshotter at {self.root}", "is closed", fix="open a new one")
        return self.client

    def _make_base(self) -> None:
        """Device 0: an empty ext4 of ``base_size`` with a 0755 root and no lost+found."""
        c = self._pool()
        c.create_thin(BASE_DEV, self.base_size)
        try:
            dev = c.attach(BASE_DEV)
            make_base_ext4(dev, self.root, what=f"thin base device of {self.root}")
            c.detach(BASE_DEV)
        except BaseException:
            c.detach(BASE_DEV)
            c.delete(BASE_DEV)
            raise
        c.commit()

    def _close(self) -> None:
        """Let go of this process's loop devices (the kernel drops each one nobody else uses; a mounted
        one stays with its mount), ask the daemon to stop if nothing else uses it, disconnect. Never waits
        on a daemon that still serves open devices or other clients: it stops by itself when idle."""
        c, self.client = self.client, None
        if c is None:
            return
        try:
            if self.idle >= 0:
                c.stop()
        except (errors.LabkitError, OSError) as e:  # the daemon stops by itself when idle anyway
            _log().warning("closing thin store %s: could not ask its daemon to stop: %s", self.root, e)
        finally:
            c.close()

    # -- hooks -------------------------------------------------------------------------------------
    def _create(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        c = self._pool()
        origin = chain[0].state["dev"] if chain else BASE_DEV
        try:
            c.create_snap(row.id, origin)
        except errors.AlreadyExists:
            self._drop_orphan(row.id)
            c.create_snap(row.id, origin)
        return {"dev": row.id}

    def _drop_orphan(self, dev_id: int) -> None:
        """Device ``dev_id`` exists but no snapshot row claims it: a process died after creating it and
        before its metadata transaction committed (the row, and the id, were rolled back and are being
        reused). Delete it so the id can be used; refuse if it is still mounted."""
        c = self._pool()
        for rid, state in self.db.execute("SELECT id, state FROM snapshots WHERE id != ?", (dev_id,)):
            if json.loads(state).get("dev") == dev_id:
                raise errors.AlreadyExists(f"thin device {dev_id} of {self.root}", f"belongs to snapshot row {rid}",
                                           fix="run `labkit gc` and check the store's metadata")
        loopdev = c.loop_of(dev_id)
        where = Mount("ext4", loopdev).targets() if loopdev else []
        if where:
            raise errors.FailedPrecondition(f"orphan thin device {dev_id} of {self.root}", f"is mounted at {where[0]}",
                                            fix="unmount it (or run `labkit gc`) and retry")
        _log().warning("thin device %d of %s belongs to no snapshot (left by a process that died mid-prepare): "
                    "deleting it", dev_id, self.root)
        c.detach(dev_id)
        c.delete(dev_id)

    def _mount(self, row: Row, chain: list[Row]) -> Mount:
        loopdev = self._pool().attach(row.state["dev"])
        opts = [o for o in self.mount_options.split(",") if o]
        if row.kind is Kind.VIEW:
            opts = ["ro", "noload", *opts]
        else:
            # the base is made with lazy_itable_init: without this, every snapshot's first mount starts
            # ext4lazyinit, which zeroes the inode tables in the background for minutes (through the pool
            # daemon), in every container; uninitialised tables are safe (ext4 knows which inodes are unused)
            opts = ["noinit_itable", *opts]
            if row.state.get("ephemeral"):
                # a `run --rm` container's (base.py, "Ephemeral snapshots"): ext4 sends no flush, so its
                # journal commits and its unmount do not each commit the pool through the daemon (three
                # fsyncs each: 12-50 ms of every thin `labkit run --rm`); overlay's `volatile`, for ext4
                opts.append("nobarrier")
        return Mount("ext4", loopdev, tuple(opts))

    def _mounted_at(self, row: Row, chain: list[Row]) -> list[str]:
        loopdev = self._pool().loop_of(row.state.get("dev", -1))
        return Mount("ext4", loopdev).targets() if loopdev else []

    def _persist(self, row: Row) -> None:
        """An ephemeral snapshot's ext4 is mounted ``nobarrier``: write what a mount of it still holds
        to the device (syncfs); :meth:`_commit` then flushes the device, which commits the pool."""
        for target in self._mounted_at(row, []):
            fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                check(libc.syncfs(fd), "syncfs", target)
            finally:
                os.close(fd)

    def _commit(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        c = self._pool()
        c.detach(row.state["dev"])
        c.commit()
        return None

    def _remove(self, row: Row) -> None:
        c = self._pool()
        dev = row.state.get("dev")
        if dev is None:
            return
        c.detach(dev, flush=False)         # its data goes: no flush; the delete waits for the loop to let go
        if dev in c.devices():
            c.delete(dev)

    def _usage(self, row: Row, chain: list[Row]) -> Usage:
        u = self._pool().usage(row.state["dev"])
        parent = chain[0].state["dev"] if chain else BASE_DEV
        inodes = max(0, self._used_inodes(row.state["dev"]) - self._used_inodes(parent))
        return Usage(u.exclusive_blocks * self.block_bytes, inodes)

    def _used_inodes(self, dev_id: int) -> int:
        """Inodes in use on the device's ext4: live from statfs when mounted, else from its superblock."""
        c = self._pool()
        loopdev = c.loop_of(dev_id)
        if loopdev:
            for m in sysmount.mountinfo():
                if m.source == loopdev:
                    st = os.statvfs(m.target)
                    return st.f_files - st.f_ffree
        with open(c.device_file(dev_id), "rb") as f:
            sb = f.read(2048)[1024:]
        total, free = int.from_bytes(sb[0:4], "little"), int.from_bytes(sb[16:20], "little")
        return total - free

    # -- abilities (labkit.snapshots.capabilities) ---------------------------------------------------
    @classmethod
    def options_for(cls, largest_image_bytes: int) -> dict[str, Any]:
        """A pool of 4x the largest image (at least 2 GiB) and a base device of 4x (at least 1 GiB)."""
        return {"data_size": max(4 * largest_image_bytes + (1 << 30), 2 << 30),
                "base_size": max(4 * largest_image_bytes, 1 << 30)}

    @property
    def block_bytes(self) -> int:
        """The pool's data block size in bytes (the pool's own, read when the store was opened)."""
        return self._block_bytes

    def store_space(self) -> StoreSpace:
        """Data blocks the pool has allocated, in bytes, of the pool's data size."""
        st = self.pool_status()
        return StoreSpace(st.used_data_blocks * self.block_bytes, st.total_data_blocks * self.block_bytes,
                          "data blocks allocated in the thin pool")

    def pool_status(self) -> Status:
        """The pool's status (``str()``: the dm-thin status line; ``.explain()``: the line in words)."""
        return self._pool().status()

    def pool_check(self) -> CheckReport:
        """The pool's consistency check (``ok``, ``problems``), done by its daemon."""
        return self._pool().check()

    def block_map(self, key: str) -> list[SnapshotBlock]:
        """Per virtual block of ``key``'s device, up to its last mapped block: data block and sharers
        (other snapshots, oldest first). One request to the daemon, whatever the number of snapshots."""
        c = self._pool()
        rows = self.db.execute("SELECT id, name, state FROM snapshots ORDER BY id").fetchall()
        devs = {name: json.loads(state).get("dev") for _id, name, state in rows}
        if key not in devs:
            raise errors.NotFound(f"snapshot {key!r}", fix="list snapshots with walk()")
        if devs[key] is None:
            return []
        names = {dev: name for name, dev in devs.items() if dev is not None and name != key}
        mine = {vb: (db, tuple(names[o] for o in others if o in names)) for vb, db, others in c.sharing(devs[key])}
        last = max(mine, default=-1)
        return [SnapshotBlock(vb, *mine[vb]) if vb in mine else SnapshotBlock(vb, None) for vb in range(last + 1)]
