"""The ``thin`` backend: Docker's devicemapper design on labkit's userspace thin pool.

Each snapshot is a thin device of one pool (:mod:`labkit.thin`): a **base device** holds an empty ext4
(``base_size``, default 10 GiB virtual, like ``dm.basesize``); ``prepare`` takes a thin snapshot of the
parent's device (or of the base) — no per-block work, so it costs the same for any image size — and
hands back an ``ext4`` mount of it through a loop device over the daemon's FUSE file; ``commit`` just
declares the active device committed; ``remove`` deletes the device and its exclusive blocks go back to
the pool. A view is a snapshot mounted read-only.

Layout under the backend root: ``pool/`` (data, metadata, the daemon's control socket and log) and
``dev/`` (the FUSE mount: one file per device). Device ids are the snapshots' metadata ids; the base is 0.

Usage is exact at the block level: the pool's exclusive blocks of the device times the block size
(thin_ls's EXCLUSIVE_BLOCKS). Inodes are not visible at the block layer; ``inodes`` is the number of
inodes the snapshot's ext4 uses beyond its parent's (statfs while mounted, the superblock otherwise).

>>> sn = open_snapshotter("thin", "/tmp/lk-thin", data_size="4G")     # doctest: +SKIP
>>> sn.prepare("c1").source                                            # doctest: +SKIP
'/dev/loop3'
"""
from __future__ import annotations

import os
from typing import Any

from .. import errors
from .._sys import mounts as sysmount
from .._sys.probe import has_filesystem, is_root
from ..units import parse_size
from .._sys.fs import make_base_ext4, require_binary
from ..thin.check import CheckReport
from ..thin.records import Status
from .base import BaseSnapshotter, Kind, Mount, Row, Usage
from .capabilities import SnapshotBlock, StoreSpace

BASE_DEV = 0


def _fuse_reason() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse: modprobe fuse (in a container: --device /dev/fuse)"
    if not has_filesystem("fuse"):
        return "the kernel has no FUSE: modprobe fuse"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError, EnvironmentError):
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
        self.client = None
        super().__init__(root)

    @classmethod
    def supported(cls, root: str) -> str | None:
        if not is_root():
            return "needs root for loop devices and mounts: run as root"
        return _fuse_reason() or require_binary("mkfs.ext4", "e2fsprogs")

    # -- pool and base device -------------------------------------------------------------------
    def _open(self) -> None:
        from ..thin.client import PoolClient
        from ..thin.pool import Pool

        pool_path = os.path.join(self.root, "pool")
        if not os.path.exists(os.path.join(pool_path, "metadata")):
            Pool.create(pool_path, data_size=self.data_size, block_size=self.block_size).close()
        self.client = PoolClient(pool_path, os.path.join(self.root, "dev"), idle=self.idle)
        if BASE_DEV not in self.client.call("devices"):
            self._make_base()

    def _make_base(self) -> None:
        """Device 0: an empty ext4 of ``base_size`` with a 0755 root and no lost+found."""
        assert self.client is not None
        self.client.call("create_thin", BASE_DEV, self.base_size)
        try:
            dev = self.client.attach(BASE_DEV)
            make_base_ext4(dev, self.root, what=f"thin base device of {self.root}")
            self.client.detach(BASE_DEV)
        except BaseException:
            self.client.detach(BASE_DEV)
            self.client.call("delete", BASE_DEV)
            raise
        self.client.call("commit")

    def _close(self) -> None:
        if self.client is None:
            return
        # detach every loop device of this pool that is no longer mounted; then let the daemon go
        for row in self.db.execute("SELECT id FROM snapshots").fetchall():
            dev = self.client.loop_of(row[0])
            if dev and not _loop_mounted(dev):
                self.client.detach(row[0])
        self.client.stop()
        self.client.close()

    # -- hooks -------------------------------------------------------------------------------------
    def _create(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        assert self.client is not None
        origin = chain[0].state["dev"] if chain else BASE_DEV
        self.client.call("create_snap", row.id, origin)
        return {"dev": row.id}

    def _mount(self, row: Row, chain: list[Row]) -> Mount:
        assert self.client is not None
        loopdev = self.client.attach(row.state["dev"])
        opts = [o for o in self.mount_options.split(",") if o]
        if row.kind is Kind.VIEW:
            opts = ["ro", "noload", *opts]
        return Mount("ext4", loopdev, tuple(opts))

    def _mounted_at(self, row: Row, chain: list[Row]) -> list[str]:
        assert self.client is not None
        loopdev = self.client.loop_of(row.state.get("dev", -1))
        return Mount("ext4", loopdev).targets() if loopdev else []

    def _commit(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        assert self.client is not None
        self.client.detach(row.state["dev"])
        self.client.call("commit")
        return None

    def _remove(self, row: Row) -> None:
        assert self.client is not None
        dev = row.state.get("dev")
        if dev is None:
            return
        self.client.detach(dev)
        if dev in self.client.call("devices"):
            self.client.call("delete", dev)

    def _usage(self, row: Row, chain: list[Row]) -> Usage:
        assert self.client is not None
        u = self.client.call("usage", row.state["dev"])
        bs = parse_size(self.block_size)
        parent = chain[0].state["dev"] if chain else BASE_DEV
        inodes = max(0, self._used_inodes(row.state["dev"]) - self._used_inodes(parent))
        return Usage(u["exclusive_blocks"] * bs, inodes)

    def _used_inodes(self, dev_id: int) -> int:
        """Inodes in use on the device's ext4: live from statfs when mounted, else from its superblock."""
        assert self.client is not None
        loopdev = self.client.loop_of(dev_id)
        if loopdev:
            for m in sysmount.mountinfo():
                if m.source == loopdev:
                    st = os.statvfs(m.target)
                    return st.f_files - st.f_ffree
        with open(self.client.device_file(dev_id), "rb") as f:
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
        """The pool's data block size in bytes."""
        return parse_size(self.block_size)

    def store_space(self) -> StoreSpace:
        """Data blocks the pool has allocated, in bytes, of the pool's data size."""
        st = self.pool_status()
        return StoreSpace(st.used_data_blocks * self.block_bytes, st.total_data_blocks * self.block_bytes,
                          "data blocks allocated in the thin pool")

    def pool_status(self) -> Status:
        """The pool's status (``str()``: the dm-thin status line; ``.explain()``: the line in words)."""
        assert self.client is not None
        d = dict(self.client.call("status"))
        d.pop("line", None)
        return Status(**d)

    def pool_check(self) -> CheckReport:
        """The pool's consistency check (``ok``, ``problems``)."""
        assert self.client is not None
        return CheckReport(**self.client.call("check"))

    def block_map(self, key: str) -> list[SnapshotBlock]:
        """Per virtual block of ``key``'s device, up to its last mapped block: data block and sharers."""
        assert self.client is not None
        with self._lock:
            devs = {i.name: self._get(i.name).state.get("dev") for i in self.walk()}
        if key not in devs:
            raise errors.NotFound(f"snapshot {key!r}", fix="list snapshots with walk()")
        owners: dict[int, list[str]] = {}
        for name, dev in devs.items():            # walk() is oldest first: sharers come out oldest first
            if name == key or dev is None:
                continue
            for _vb, db in self.client.call("mappings", dev):
                owners.setdefault(db, []).append(name)
        mine = {vb: db for vb, db in self.client.call("mappings", devs[key])}
        last = max(mine, default=-1)
        return [SnapshotBlock(vb, mine.get(vb), tuple(owners.get(mine[vb], ())) if vb in mine else ())
                for vb in range(last + 1)]


def _loop_mounted(dev: str) -> bool:
    return any(m.source == dev for m in sysmount.mountinfo())
