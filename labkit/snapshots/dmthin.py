"""The ``dmthin`` backend: the kernel's own dm-thin (device-mapper thin provisioning) through dmsetup.

The same design as :mod:`labkit.snapshots.thin` — an ext4 base device, ``prepare`` = a thin snapshot of
the parent's device, ``commit`` = deactivate, ``remove`` = delete — but the pool is the kernel's
``thin-pool`` target over two loop devices (a sparse data file and a metadata file under the store root),
driven with ``dmsetup message <pool> 0 "create_thin|create_snap|delete ..."`` as
Documentation/admin-guide/device-mapper/thin-provisioning.rst describes. It lets a course machine that has
device-mapper compare labkit's userspace pool with the real thing.

Runs only where ``/dev/mapper/control`` exists. labkit's CI host has no device-mapper, so ``labkit backends``
says so there and the host's conformance run skips it with that reason; ``tests/vm`` runs the whole suite
against it inside a VM with Debian's kernel (see docs/vm.md).

Names: the pool is ``labkit-<hash>-pool``, thin devices ``labkit-<hash>-<id>``, loop devices carry
``labkit-dmthin-<hash>``; ``labkit gc`` removes them (see :func:`_dm_leftovers`).

>>> sn = open_snapshotter("dmthin", "/var/lib/labkit/snapshots/dmthin", data_size="20G")   # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Any

from .. import errors
from .._sys import leftovers, loop
from .._sys.leftovers import Leftover, collector
from .._sys import mounts as sysmount
from .._sys.probe import is_root
from ..units import parse_size
from .._sys.fs import make_base_ext4, require_binary, run
from ..thin.check import CheckReport
from ..thin.records import Status
from .base import BaseSnapshotter, Kind, Mount, Row, Usage
from .capabilities import StoreSpace

BASE_DEV = 0
SECTOR = 512
#: what :meth:`DmThinSnapshotter.pool_check` can and cannot say
CHECK_NOTE = ("dm-thin: a live pool's metadata cannot be checked in place (thin_check needs it inactive); "
              "this report is the kernel's own verdict from `dmsetup status` (needs_check flag, read-only or "
              "failed mode). For a full check: close the store, then run thin_check on pool/metadata")


def _dmsetup(*args: str, what: str) -> str:
    return run(["dmsetup", *args], what)


class DmThinSnapshotter(BaseSnapshotter):
    """The kernel's dm-thin through dmsetup (needs device-mapper; not available on every host)."""

    name = "dmthin"

    def __init__(self, root: str | os.PathLike[str], *, data_size: int | str = "20G", block_size: int | str = "64K",
                 base_size: int | str = "10G", metadata_size: int | str = "128M") -> None:
        self.data_size = parse_size(data_size, what="dmthin data_size")
        self.block_size = parse_size(block_size, what="dmthin block_size")
        self.base_size = parse_size(base_size, what="dmthin base_size")
        self.metadata_size = parse_size(metadata_size, what="dmthin metadata_size")
        if self.block_size % (64 << 10) or not (64 << 10) <= self.block_size <= (1 << 30):
            raise errors.InvalidArgument(f"dmthin block_size {block_size!r}", "must be 64 KiB..1 GiB in steps of 64 KiB")
        self.tag = ""
        self.loops: list[str] = []
        self.low_water = max(1, (self.data_size // self.block_size) // 20)  # data blocks (the table's argument)
        super().__init__(root)

    @classmethod
    def supported(cls, root: str) -> str | None:
        if not is_root():
            return "needs root for device-mapper: run as root"
        if not os.path.exists("/dev/mapper/control"):
            return ("needs device-mapper: /dev/mapper/control is missing "
                    "(modprobe dm_thin_pool; this kernel may lack CONFIG_DM_THIN_PROVISIONING)")
        return require_binary("dmsetup", "dmsetup") or require_binary("mkfs.ext4", "e2fsprogs") or \
            require_binary("thin_ls", "thin-provisioning-tools")

    # -- names ----------------------------------------------------------------------------------------
    @property
    def pool_name(self) -> str:
        return f"labkit-{self.tag}-pool"

    def dev_name(self, dev_id: int) -> str:
        return f"labkit-{self.tag}-{dev_id}"

    def _active(self, name: str) -> bool:
        return os.path.exists(f"/dev/mapper/{name}")

    # -- pool -----------------------------------------------------------------------------------------
    def _open(self) -> None:
        self.tag = hashlib.sha1(self.root.encode()).hexdigest()[:8]
        pool_dir = os.path.join(self.root, "pool")
        os.makedirs(pool_dir, exist_ok=True)
        data, meta = os.path.join(pool_dir, "data"), os.path.join(pool_dir, "metadata")
        fresh = not os.path.exists(meta)
        for path, size in ((data, self.data_size), (meta, self.metadata_size)):
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.truncate(size)
        if not self._active(self.pool_name):
            try:
                meta_dev = loop.attach(meta, name=f"labkit-dmthin-{self.tag}")
                self.loops.append(meta_dev)
                data_dev = loop.attach(data, name=f"labkit-dmthin-{self.tag}")
                self.loops.append(data_dev)
                sectors = os.path.getsize(data) // SECTOR
                table = (f"0 {sectors} thin-pool {meta_dev} {data_dev} {self.block_size // SECTOR} {self.low_water} "
                         f"1 skip_block_zeroing")
                _dmsetup("create", self.pool_name, "--table", table, what=f"dm-thin pool {self.pool_name}")
            except BaseException:
                self._release_loops()
                raise
        if fresh:
            self._make_base()

    def _message(self, msg: str) -> None:
        _dmsetup("message", self.pool_name, "0", msg, what=f"dm-thin pool {self.pool_name}: {msg}")

    def _activate(self, dev_id: int, size: int, *, readonly: bool = False) -> str:
        name = self.dev_name(dev_id)
        if not self._active(name):
            args = ["create", name, "--table", f"0 {size // SECTOR} thin /dev/mapper/{self.pool_name} {dev_id}"]
            if readonly:
                args.insert(1, "--readonly")
            _dmsetup(*args, what=f"thin device {name}")
        return f"/dev/mapper/{name}"

    def _deactivate(self, dev_id: int) -> None:
        name = self.dev_name(dev_id)
        if self._active(name):
            _dmsetup("remove", "--retry", name, what=f"thin device {name}")

    def _make_base(self) -> None:
        self._message(f"create_thin {BASE_DEV}")
        try:
            dev = self._activate(BASE_DEV, self.base_size)
            make_base_ext4(dev, self.root, what=f"dmthin base device of {self.root}", discard=True)
        finally:
            self._deactivate(BASE_DEV)

    def _release_loops(self) -> None:
        for dev in self.loops:
            try:
                loop.detach(dev)
            except OSError:
                pass
        self.loops = []

    def _close(self) -> None:
        for (dev_id,) in self.db.execute("SELECT id FROM snapshots").fetchall():
            if not any(m.source == f"/dev/mapper/{self.dev_name(dev_id)}" for m in sysmount.mountinfo()):
                self._deactivate(dev_id)
        if self._active(self.pool_name):
            try:
                _dmsetup("remove", "--retry", self.pool_name, what=f"dm-thin pool {self.pool_name}")
            except errors.LabkitError:
                return  # a device is still open: leave the pool, `labkit gc` removes it later
        self.loops = [lp.dev for lp in loop.list_loops() if lp.name == f"labkit-dmthin-{self.tag}"]
        self._release_loops()

    # -- hooks ----------------------------------------------------------------------------------------
    def _create(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        origin = chain[0].state["dev"] if chain else BASE_DEV
        size = chain[0].state["size"] if chain else self.base_size
        self._deactivate(origin)  # a snapshot's origin must not be active (or must be suspended)
        self._message(f"create_snap {row.id} {origin}")
        return {"dev": row.id, "size": size}

    def _mount(self, row: Row, chain: list[Row]) -> Mount:
        dev = self._activate(row.state["dev"], row.state["size"], readonly=row.kind is Kind.VIEW)
        return Mount("ext4", dev, ("ro", "noload") if row.kind is Kind.VIEW else ())

    def _mounted_at(self, row: Row, chain: list[Row]) -> list[str]:
        return Mount("ext4", f"/dev/mapper/{self.dev_name(row.state.get('dev', -1))}").targets()

    def _commit(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        self._deactivate(row.state["dev"])
        return None

    def _remove(self, row: Row) -> None:
        dev = row.state.get("dev")
        if dev is None:
            return
        self._deactivate(dev)
        self._message(f"delete {dev}")

    def _usage(self, row: Row, chain: list[Row]) -> Usage:
        meta_dev = next((lp.dev for lp in loop.list_loops()
                         if lp.name == f"labkit-dmthin-{self.tag}" and lp.backing_file.endswith("/metadata")), None)
        if meta_dev is None:
            raise errors.FailedPrecondition(f"dmthin pool {self.pool_name}", "has no metadata device attached")
        self._message("reserve_metadata_snap")
        try:
            out = subprocess.run(["thin_ls", "--metadata-snap", "--no-headers", "-o", "DEV,EXCLUSIVE_BYTES", meta_dev],
                                 capture_output=True, text=True, check=True).stdout
        finally:
            self._message("release_metadata_snap")
        size = 0
        for line in out.splitlines():
            parts = line.split()
            if parts and int(parts[0]) == row.state["dev"]:
                size = parse_size(parts[1])
        parent, parent_size = (chain[0].state["dev"], chain[0].state["size"]) if chain else (BASE_DEV, self.base_size)
        inodes = max(0, self._used_inodes(row.state["dev"], row.state["size"]) - self._used_inodes(parent, parent_size))
        return Usage(size, inodes)

    def _used_inodes(self, dev_id: int, size: int) -> int:
        """Inodes in use on the device's ext4: from statfs when it is mounted, else from its superblock (the
        device is activated read-only for the read when it is not active, and deactivated again)."""
        path = f"/dev/mapper/{self.dev_name(dev_id)}"
        for m in sysmount.mountinfo():
            if m.source == path:
                st = os.statvfs(m.target)
                return st.f_files - st.f_ffree
        was_active = self._active(self.dev_name(dev_id))
        dev = self._activate(dev_id, size, readonly=True)
        try:
            with open(dev, "rb") as f:
                sb = f.read(2048)[1024:]
        finally:
            if not was_active:
                self._deactivate(dev_id)
        total, free = int.from_bytes(sb[0:4], "little"), int.from_bytes(sb[16:20], "little")
        return total - free


    # -- abilities (labkit.snapshots.capabilities) -------------------------------------------------------
    @classmethod
    def options_for(cls, largest_image_bytes: int) -> dict[str, Any]:
        """A pool of 4x the largest image (at least 2 GiB) and a base device of 4x (at least 1 GiB), as for
        ``thin``; the default 128 MiB of metadata maps far more than that."""
        return {"data_size": max(4 * largest_image_bytes + (1 << 30), 2 << 30),
                "base_size": max(4 * largest_image_bytes, 1 << 30)}

    def pool_status(self) -> Status:
        """The kernel's status of the pool, parsed from ``dmsetup status <pool>`` (``low_water`` from the
        table's low-water mark; ``queued_io`` is not visible and stays False)."""
        line = _dmsetup("status", self.pool_name, what=f"dm-thin pool {self.pool_name}")
        return Status.parse(line, low_water_mark=self.low_water)

    def store_space(self) -> StoreSpace:
        """Data blocks the kernel's pool has allocated (``dmsetup status``), in bytes, of its data size."""
        st = self.pool_status()
        return StoreSpace(st.used_data_blocks * self.block_size, st.total_data_blocks * self.block_size,
                          "data blocks allocated in the kernel's thin pool (dmsetup status)")

    def pool_check(self) -> CheckReport:
        """The kernel's verdict on its pool, not a recount: ``ok`` unless ``needs_check`` is set or the pool
        is read-only or failed; :data:`CHECK_NOTE` (in ``notes``) says why and how to check fully."""
        try:
            st = self.pool_status()
        except errors.FailedPrecondition as e:  # "Fail"
            return CheckReport(ok=False, problems=[str(e)], notes=[CHECK_NOTE])
        problems = []
        if st.needs_check:
            problems.append("the kernel set needs_check on the pool's metadata")
        if st.mode == "read_only":
            problems.append("the pool is read-only after a metadata error")
        return CheckReport(ok=not problems, problems=problems, transaction_id=st.transaction_id,
                           free_metadata_blocks=st.total_metadata_blocks - st.used_metadata_blocks, notes=[CHECK_NOTE])


@collector(order=leftovers.DEVICE_MAPPER)
def _dm_leftovers(root: str, everything: bool) -> list[Leftover]:
    """gc collector: device-mapper devices named ``labkit-*`` (thin devices before their pool)."""
    if not os.path.exists("/dev/mapper/control"):
        return []
    try:
        out = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    # a pool belongs to the store when its loop devices' backing files lie inside it
    tags = {lp.name.removeprefix("labkit-dmthin-") for lp in loop.list_loops()
            if lp.name.startswith("labkit-dmthin-") and leftovers.inside(lp.backing_file, root)}
    names = [line.split()[0] for line in out.splitlines() if line.startswith("labkit-")]
    names = [n for n in names if everything or n.split("-")[1] in tags]
    names.sort(key=lambda n: n.endswith("-pool"))  # pools last
    return [Leftover("dm", n, "device-mapper device",
                     (lambda n=n: run(["dmsetup", "remove", "--retry", n], f"dm device {n}") and None))
            for n in names]
