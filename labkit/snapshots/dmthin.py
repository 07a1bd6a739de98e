"""The ``dmthin`` backend: the kernel's own dm-thin (device-mapper thin provisioning), driven through
device-mapper's ioctls (:mod:`labkit._sys.dm`: what dmsetup sends, without a process per call).

The same design as :mod:`labkit.snapshots.thin` — an ext4 base device, ``prepare`` = a thin snapshot of
the parent's device, ``commit`` = deactivate, ``remove`` = delete — but the pool is the kernel's
``thin-pool`` target over two loop devices (a sparse data file and a metadata file under the store root),
driven with the target messages ``create_thin``, ``create_snap`` and ``delete`` as
Documentation/admin-guide/device-mapper/thin-provisioning.rst describes. It lets a course machine that has
device-mapper compare labkit's userspace pool with the real thing.

Processes: ``mkfs.ext4`` for the base device (``pool/base-made`` records that it was made) — once per host,
kernel and set of sizes: the new store's pool files, base made and nothing else, are kept as a template
under :data:`TEMPLATES` and the next new store with the same sizes starts as a sparse copy of them — and
``thin_ls`` once per :meth:`~DmThinSnapshotter.usage`; nothing else forks.

Runs only where ``/dev/mapper/control`` exists. labkit's CI host has no device-mapper, so ``labkit backends``
says so there and the host's conformance run skips it with that reason; ``tests/vm`` runs the whole suite
against it inside a VM with Debian's kernel (see docs/vm.md).

Names: the pool is ``labkit-<hash>-pool``, thin devices ``labkit-<hash>-<id>``, loop devices carry
``labkit-dmthin-<hash>``; ``labkit gc`` removes them (see :func:`_dm_leftovers`).

>>> sn = open_snapshotter("dmthin", "/var/lib/labkit/snapshots/dmthin", data_size="20G")   # doctest: +SKIP
"""
from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .. import errors
from .._sys import dm, leftovers, loop
from .._sys import mounts as sysmount
from .._sys.fs import make_base_ext4, require_binary, run
from .._sys.leftovers import Leftover, collector
from .._sys.probe import is_root
from ..units import parse_size
from .base import BaseSnapshotter, Kind, Mount, Row, Usage
from .capabilities import StoreSpace
from .mount import unmount

if TYPE_CHECKING:   # labkit.thin is imported where a method needs it: gc imports this module on every CLI run
    from ..thin.check import CheckReport
    from ..thin.records import Status

BASE_DEV = 0
SECTOR = 512
#: pristine pools (base device made, nothing else) that new stores copy instead of running mkfs: one per
#: set of sizes and kernel release (root's own; /run is memory, so they go at reboot)
TEMPLATES = "/run/labkit/dmthin-base"
_TEMPLATE_FORMAT = 1   # bump when the pool table's features or the base's mkfs change
#: what :meth:`DmThinSnapshotter.pool_check` can and cannot say
CHECK_NOTE = ("dm-thin: a live pool's metadata cannot be checked in place (thin_check needs it inactive); "
              "this report is the kernel's own verdict from its status line (needs_check flag, read-only or "
              "failed mode). For a full check: close the store, then run thin_check on pool/metadata")

T = TypeVar("T")


def _dm(what: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Call a :mod:`labkit._sys.dm` function; its ``OSError`` becomes a one-line labkit error naming ``what``."""
    try:
        return fn(*args, **kw)
    except OSError as e:
        why = f"device-mapper {fn.__name__}: {os.strerror(e.errno) if e.errno else e}"
        if e.errno == errno.EEXIST:
            raise errors.AlreadyExists(what, why) from e
        if e.errno in (errno.ENXIO, errno.ENODEV, errno.ENODATA):
            raise errors.NotFound(what, why, fix="run `labkit gc` if the store was left half open") from e
        if e.errno == errno.EBUSY:
            raise errors.FailedPrecondition(what, why, fix="unmount it (or close what holds it open) first") from e
        raise errors.LabkitError(what, why) from e


class DmThinSnapshotter(BaseSnapshotter):
    """The kernel's dm-thin through device-mapper's ioctls (needs device-mapper; not on every host)."""

    name = "dmthin"

    def __init__(self, root: str | os.PathLike[str], *, data_size: int | str = "20G", block_size: int | str = "64K",
                 base_size: int | str = "10G", metadata_size: int | str = "128M") -> None:
        self.data_size = parse_size(data_size, what="dmthin data_size")
        self.block_size = parse_size(block_size, what="dmthin block_size")
        self.base_size = parse_size(base_size, what="dmthin base_size")
        self.metadata_size = parse_size(metadata_size, what="dmthin metadata_size")
        if self.block_size % (64 << 10) or not (64 << 10) <= self.block_size <= (1 << 30):
            raise errors.InvalidArgument(f"dmthin block_size {block_size!r}",
                                         "must be 64 KiB..1 GiB in steps of 64 KiB")
        self.tag = ""
        self.loops: list[str] = []
        self._base_used_inodes: int | None = None
        self.low_water = max(1, (self.data_size // self.block_size) // 20)  # data blocks (the table's argument)
        super().__init__(root)

    @classmethod
    def supported(cls, root: str) -> str | None:
        if not is_root():
            return "needs root for device-mapper: run as root"
        if not dm.available():
            return ("needs device-mapper: /dev/mapper/control is missing "
                    "(modprobe dm_thin_pool; this kernel may lack CONFIG_DM_THIN_PROVISIONING)")
        return require_binary("mkfs.ext4", "e2fsprogs") or require_binary("thin_ls", "thin-provisioning-tools")

    # -- names ----------------------------------------------------------------------------------------
    @property
    def pool_name(self) -> str:
        return f"labkit-{self.tag}-pool"

    def dev_name(self, dev_id: int) -> str:
        return f"labkit-{self.tag}-{dev_id}"

    def _active(self, name: str) -> bool:
        return _dm(f"device-mapper device {name}", dm.exists, name)

    # -- pool -----------------------------------------------------------------------------------------
    def _open(self) -> None:
        self.tag = hashlib.sha1(self.root.encode()).hexdigest()[:8]
        pool_dir = os.path.join(self.root, "pool")
        os.makedirs(pool_dir, exist_ok=True)
        # two processes opening a new store at once: one makes the pool and the base device, the other waits
        lock = os.open(os.path.join(self.root, "dmthin.lock"),
                       os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._open_pool(pool_dir)
        finally:
            os.close(lock)

    def _open_pool(self, pool_dir: str) -> None:
        data, meta = os.path.join(pool_dir, "data"), os.path.join(pool_dir, "metadata")
        fresh = not os.path.exists(meta) and not self._from_template(pool_dir)
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
                params = f"{meta_dev} {data_dev} {self.block_size // SECTOR} {self.low_water} 1 skip_block_zeroing"
                _dm(f"dm-thin pool {self.pool_name}", dm.create, self.pool_name, "thin-pool", 0, sectors, params)
            except BaseException:
                self._release_loops()
                raise
        if not os.path.exists(os.path.join(pool_dir, "base-made")):
            try:
                self._make_base()
            except BaseException:   # the store does not open: leave no pool or loop device behind
                if self.loops:       # (a pool this opener did not create is someone else's)
                    try:
                        dm.remove(self.pool_name)
                    except OSError:
                        pass
                    self._release_loops()
                raise
            with open(os.path.join(pool_dir, "base-made"), "w"):
                pass
            if fresh:
                self._save_template(pool_dir)

    # -- templates: one mkfs per host and set of sizes, not one per store ---------------------------------
    def _template(self) -> str | None:
        """The template directory for this store's sizes and this kernel (it may not exist yet), or None
        when :data:`TEMPLATES` is not a directory only root can write."""
        if not _safe_dir(os.path.dirname(TEMPLATES), make=True) or not _safe_dir(TEMPLATES, make=True):
            return None
        key = (f"{_TEMPLATE_FORMAT}-{self.data_size}-{self.block_size}-{self.base_size}-{self.metadata_size}-"
               f"{os.uname().release}")
        return os.path.join(TEMPLATES, hashlib.sha1(key.encode()).hexdigest()[:16])

    def _from_template(self, pool_dir: str) -> bool:
        """Copy a template's pool files (sparse) into ``pool_dir`` of a new store; False when there is none
        (or the copy failed: the caller then makes the pool and the base itself)."""
        src = self._template()
        if src is None or not os.path.isfile(os.path.join(src, "metadata")):
            return False
        try:
            for name in ("data", "metadata"):   # metadata last: its presence says the pool files are whole
                tmp = os.path.join(pool_dir, f".{name}.tmp")
                _copy_sparse(os.path.join(src, name), tmp)
                os.replace(tmp, os.path.join(pool_dir, name))
            with open(os.path.join(pool_dir, "base-made"), "w"):
                pass
        except OSError:
            for name in ("data", "metadata", ".data.tmp", ".metadata.tmp"):
                try:
                    os.unlink(os.path.join(pool_dir, name))
                except FileNotFoundError:
                    pass
            return False
        return True

    def _save_template(self, pool_dir: str) -> None:
        """Keep a copy of a new store's pool files, base device made and nothing else, for the next store
        with the same sizes (the pool is suspended around the copy: its metadata committed, no IO in flight).
        Best effort: a failure only means the next store runs mkfs too."""
        dst = self._template()
        if dst is None or os.path.exists(dst):
            return
        try:
            tmp = tempfile.mkdtemp(prefix=".new-", dir=TEMPLATES)
        except OSError:
            return
        try:
            _dm(f"dm-thin pool {self.pool_name}", dm.suspend, self.pool_name)
            try:
                for name in ("data", "metadata"):
                    _copy_sparse(os.path.join(pool_dir, name), os.path.join(tmp, name))
            finally:
                _dm(f"dm-thin pool {self.pool_name}", dm.resume, self.pool_name)
            os.rename(tmp, dst)      # another process may have made it meanwhile: then ours goes
        except (OSError, errors.LabkitError):
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _message(self, msg: str) -> None:
        _dm(f"dm-thin pool {self.pool_name} (message {msg!r})", dm.message, self.pool_name, msg)

    def _activate(self, dev_id: int, size: int, *, readonly: bool = False) -> str:
        name = self.dev_name(dev_id)
        if not self._active(name):
            _dm(f"thin device {name}", dm.create, name, "thin", 0, size // SECTOR,
                f"{dm.node(self.pool_name)} {dev_id}", readonly=readonly)
        return dm.node(name)

    def _deactivate(self, dev_id: int) -> None:
        name = self.dev_name(dev_id)
        if self._active(name):
            _dm(f"thin device {name}", dm.remove, name)

    def _make_base(self) -> None:
        """Device 0: an empty ext4 of ``base_size`` (root 0755, no lost+found): the store's one mkfs, unless
        it started as a copy of a template. A device left without a filesystem by an earlier, interrupted
        open is formatted now; one that has it is kept."""
        try:
            self._message(f"create_thin {BASE_DEV}")
        except errors.AlreadyExists:
            pass
        try:
            dev = self._activate(BASE_DEV, self.base_size)
            if not _has_ext4(dev):
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
        mounted = {m.source for m in sysmount.mountinfo()}
        for (dev_id,) in self.db.execute("SELECT id FROM snapshots").fetchall():
            if dm.node(self.dev_name(dev_id)) not in mounted:
                try:
                    self._deactivate(dev_id)
                except errors.FailedPrecondition:
                    pass   # held open by someone else: it stays, and so does the pool
        if self._active(self.pool_name):
            try:
                _dm(f"dm-thin pool {self.pool_name}", dm.remove, self.pool_name)
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
        if row.kind is Kind.VIEW:
            return Mount("ext4", dev, ("ro", "noload"))
        # the base is made with lazy_itable_init: without noinit_itable every snapshot's first writable mount
        # starts ext4lazyinit, which writes zeros over the inode tables in the background (allocating pool
        # blocks that the snapshot's usage would then count); uninitialised tables are safe
        return Mount("ext4", dev, ("noinit_itable",))

    def _mounted_at(self, row: Row, chain: list[Row]) -> list[str]:
        return Mount("ext4", dm.node(self.dev_name(row.state.get("dev", row.id)))).targets()

    def _commit(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        # the device is unmounted (the contract) and never changes again: keep its used inodes for usage(),
        # which then needs no activation of committed devices
        inodes = self._used_inodes(row.state["dev"], row.state["size"])
        self._deactivate(row.state["dev"])
        return {**row.state, "inodes": inodes}

    def _remove(self, row: Row) -> None:
        dev = row.state.get("dev", row.id)   # no state: a prepare that crashed after (or before) create_snap
        self._deactivate(dev)
        try:
            self._message(f"delete {dev}")
        except errors.NotFound:
            if row.state:
                raise

    def _usage(self, row: Row, chain: list[Row]) -> Usage:
        meta_dev = next((lp.dev for lp in loop.list_loops()
                         if lp.name == f"labkit-dmthin-{self.tag}" and lp.backing_file.endswith("/metadata")), None)
        if meta_dev is None:
            raise errors.FailedPrecondition(f"dmthin pool {self.pool_name}", "has no metadata device attached",
                                            fix="close the store and open it again")
        self._message("reserve_metadata_snap")
        try:
            out = run(["thin_ls", "--metadata-snap", "--no-headers", "-o", "DEV,EXCLUSIVE_BYTES", meta_dev],
                      f"thin_ls of dm-thin pool {self.pool_name}")
        finally:
            self._message("release_metadata_snap")
        size = 0
        for line in out.splitlines():
            parts = line.split()
            if parts and int(parts[0]) == row.state["dev"]:
                size = parse_size(parts[1])
        inodes = max(0, self._inodes_of(row) - (self._inodes_of(chain[0]) if chain else self._base_inodes()))
        return Usage(size, inodes)

    def _inodes_of(self, row: Row) -> int:
        """Used inodes of a snapshot's ext4: kept since its commit for a committed one, read now otherwise."""
        if row.kind is Kind.COMMITTED and "inodes" in row.state:
            return int(row.state["inodes"])
        return self._used_inodes(row.state["dev"], row.state["size"])

    def _base_inodes(self) -> int:
        """Used inodes of the base device's ext4 (read once per snapshotter: the base never changes)."""
        if self._base_used_inodes is None:
            self._base_used_inodes = self._used_inodes(BASE_DEV, self.base_size)
        return self._base_used_inodes

    def _used_inodes(self, dev_id: int, size: int) -> int:
        """Inodes in use on the device's ext4: from statfs when it is mounted, else from its superblock (the
        device is activated read-only for the read when it is not active, and deactivated again)."""
        path = dm.node(self.dev_name(dev_id))
        for m in sysmount.mountinfo():
            if m.source == path:
                st = os.statvfs(m.target)
                return st.f_files - st.f_ffree
        was_active = self._active(self.dev_name(dev_id))
        dev = self._activate(dev_id, size, readonly=True)
        try:
            sb = _superblock(dev)
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
        """The kernel's status of the pool: its status line (what ``dmsetup status <pool>`` prints, read with
        one ioctl), parsed (``low_water`` from the table's low-water mark; ``queued_io`` is not visible and
        stays False)."""
        from ..thin.records import Status  # here, not at the top: see the TYPE_CHECKING import
        line = _dm(f"dm-thin pool {self.pool_name}", dm.status, self.pool_name)
        return Status.parse(line, low_water_mark=self.low_water)

    def store_space(self) -> StoreSpace:
        """Data blocks the kernel's pool has allocated (its status line), in bytes, of its data size."""
        st = self.pool_status()
        return StoreSpace(st.used_data_blocks * self.block_size, st.total_data_blocks * self.block_size,
                          "data blocks allocated in the kernel's thin pool (dmsetup status)")

    def pool_check(self) -> CheckReport:
        """The kernel's verdict on its pool, not a recount: ``ok`` unless ``needs_check`` is set or the pool
        is read-only or failed; :data:`CHECK_NOTE` (in ``notes``) says why and how to check fully."""
        from ..thin.check import CheckReport  # here, not at the top: see the TYPE_CHECKING import
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


def _safe_dir(path: str, *, make: bool = False) -> bool:
    """True when ``path`` is a real directory (not a symlink) owned by root that nobody else may write;
    made 0700 first when missing and ``make``."""
    try:
        if make:
            os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022


def _copy_sparse(src: str, dst: str) -> None:
    """Copy file ``src`` to a new file ``dst`` (created, never followed), data extents only: holes stay holes."""
    fi = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fi).st_size
            os.ftruncate(fo, size)
            off = 0
            while off < size:
                try:
                    off = os.lseek(fi, off, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:   # no data after off
                        break
                    raise
                end = os.lseek(fi, off, os.SEEK_HOLE)
                while off < end:
                    n = os.copy_file_range(fi, fo, end - off, off, off)
                    if n <= 0:
                        raise OSError(errno.EIO, f"copying {src}: copy_file_range made no progress")
                    off += n
        finally:
            os.close(fo)
    finally:
        os.close(fi)


def _superblock(dev: str) -> bytes:
    """The 1 KiB ext4 superblock of ``dev`` (at byte 1024)."""
    fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, 1024, 1024)
    finally:
        os.close(fd)


def _has_ext4(dev: str) -> bool:
    """True when ``dev`` holds an ext2/3/4 superblock (magic 0xEF53)."""
    return _superblock(dev)[56:58] == b"\x53\xef"


def _store_tags(root: str) -> set[str]:
    """Tags of the dmthin pools whose loop devices' backing files lie inside ``root``."""
    return {lp.name.removeprefix("labkit-dmthin-") for lp in loop.list_loops()
            if lp.name.startswith("labkit-dmthin-") and leftovers.inside(lp.backing_file, root)}


def _ours(name: str, tags: set[str], everything: bool) -> bool:
    """``name`` (``labkit-<tag>-<id>|pool``) is a device of one of ``tags`` (of any labkit pool: ``everything``)."""
    parts = name.split("-")
    return len(parts) == 3 and parts[0] == "labkit" and (everything or parts[1] in tags)


@collector(order=leftovers.MOUNTS)
def _dm_mounts(root: str, everything: bool) -> list[Leftover]:
    """gc collector: mounts of the store's thin devices outside the store root (a container's root filesystem
    mounted elsewhere; mounts inside the root are labkit.gc's own), deepest first."""
    if not dm.available():
        return []
    tags = _store_tags(root)
    found = [m for m in sysmount.mountinfo()
             if m.source.startswith("/dev/mapper/labkit-") and not leftovers.inside(m.target, root)
             and _ours(m.source.removeprefix("/dev/mapper/"), tags, everything)]
    found.sort(key=lambda m: (m.target.count("/"), m.mount_id), reverse=True)
    return [Leftover("mount", m.target, f"{m.fstype} from {m.source}", functools.partial(unmount, m.target, retries=5))
            for m in found]


@collector(order=leftovers.DEVICE_MAPPER)
def _dm_leftovers(root: str, everything: bool) -> list[Leftover]:
    """gc collector: device-mapper devices named ``labkit-<tag>-*`` of the store's pools (thin devices before
    their pool); releasing one raises ``OSError`` (EBUSY while it is open), as gc expects."""
    names = [n for n in dm.list_devices() if n.startswith("labkit-")]
    if not names:
        return []
    tags = _store_tags(root)
    names = [n for n in names if _ours(n, tags, everything)]
    names.sort(key=lambda n: n.endswith("-pool"))  # pools last
    return [Leftover("dm", n, "device-mapper device", functools.partial(dm.remove, n)) for n in names]
