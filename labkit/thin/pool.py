"""The thin pool: thin devices and snapshots over one data file, with transactional metadata.

A pool is a directory holding ``data`` (a sparse file of ``nr_data_blocks`` blocks) and ``metadata``
(4 KiB blocks, see :mod:`labkit.thin.metadata`). Each thin device maps virtual blocks to data blocks
through its own copy-on-write B-tree; a snapshot shares its origin's whole tree by taking one reference
on the root, so it costs the same whatever the device's size.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> with Pool.create(os.path.join(d, "pool"), data_size="4M") as pool:
...     pool.create_thin(1, "1G")                      # over-commit: 1 GiB on a 4 MiB pool
...     dev = pool.device(1); dev.write(0, b"hello")
...     pool.create_snap(2, 1)
...     pool.device(2).read(0, 5), pool.usage(1)
(b'hello', Usage(mapped_blocks=1, exclusive_blocks=0, shared_blocks=1))
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import sys
import threading
import time as _time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, cast

from .._sys.libc import libc
from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ..units import parse_size
from . import btree
from .check import CheckReport, check_metadata
from .metadata import (
    BLOCK,
    KIND_DEVICES,
    KIND_MAPPING,
    NEEDS_CHECK,
    MetadataError,
    NoMetadataSpace,
    Superblock,
    TransactionManager,
    index_capacity,
    load_spacemap,
    new_uuid,
)
from .records import DEVICE_WIDTH, BlockInfo, DeviceDetails, PoolFull, Status, Usage
from .spacemap import NoSpace, SpaceMap

if TYPE_CHECKING:  # thin_dump XML: imported by dump_xml and restore_xml (the daemon's start does without)
    from .xml import XmlDevice, XmlDeviceEnd, XmlMapping, XmlSuperblock

__all__ = ["Pool", "Device", "PoolFull", "DeviceDetails", "Usage", "BlockInfo", "Status", "CheckReport"]

MIN_BLOCK = 64 << 10
MAX_BLOCK = 1 << 30
MAX_DEV_ID = (1 << 24) - 1
TIME_MASK = (1 << 24) - 1
DATA_FILE = "data"
META_FILE = "metadata"
#: a run of at least this many bytes written to the data file starts its way to the disk at once
#: (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait), so the disk writes overlap with the
#: next requests instead of all waiting for the commit's fsync; 0 turns it off. Durability is unchanged:
#: only the commit's fsync makes anything durable.
EARLY_WRITEBACK = 256 << 10
SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = libc.sync_file_range
_sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)


def _block_size(value: int | str) -> int:
    bs = parse_size(value, what="block_size")
    if bs < MIN_BLOCK or bs > MAX_BLOCK or bs % MIN_BLOCK:
        raise InvalidArgument(f"thin pool block_size {value!r}", "must be 64 KiB..1 GiB in steps of 64 KiB",
                              fix="use e.g. block_size='64K' or '1M'")
    return bs


class Pool:
    """A thin pool in a directory. Use :meth:`create` or :meth:`open`; close (or leave the ``with``)
    to commit.

    ``low_water_mark`` (in data blocks), ``error_if_no_space`` and ``on_low_water`` belong to the
    running pool (in dm-thin they are table arguments), so they are given at each create/open.
    ``commit_interval`` is how often busy devices commit (seconds; None: only explicit commits).

    >>> import tempfile, os
    >>> p = Pool.create(os.path.join(tempfile.mkdtemp(), "p"), data_size="1M", block_size="64K")
    >>> p.status().total_data_blocks, str(p.status()).split()[-3:]
    (16, ['no_discard_passdown', 'error_if_no_space', '-'])
    >>> p.close()
    """

    def __init__(self, path: str, *, low_water_mark: int | None = None, error_if_no_space: bool = True,
                 on_low_water: Callable[[Pool], None] | None = None, commit_interval: float | None = 1.0,
                 lock_wait: float = 0.0, _create: dict[str, int] | None = None) -> None:
        self.path = os.path.abspath(path)
        self.low_water_mark = low_water_mark
        self.error_if_no_space = error_if_no_space
        self.on_low_water = on_low_water
        self.commit_interval = commit_interval
        self._lock = threading.RLock()
        # data I/O done outside the lock (see _write): commit, snapshot, delete and discard wait for it
        self._io = threading.Condition(threading.Lock())
        self._inflight = 0
        self._closed = True
        meta_path = os.path.join(self.path, META_FILE)
        data_path = os.path.join(self.path, DATA_FILE)
        if _create is None and not os.path.exists(meta_path):
            raise NotFound(f"thin pool '{self.path}'", fix="create it with Pool.create(path, data_size=...)")
        try:  # creating: O_EXCL, so two creators of one path cannot format each other's pool
            self._mfd = os.open(meta_path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
                                | (os.O_CREAT | os.O_EXCL if _create else 0), 0o600)
        except FileExistsError:
            raise AlreadyExists(f"thin pool '{self.path}'", fix="open it with Pool.open(path)") from None
        try:
            self._dfd = os.open(data_path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if _create else 0),
                                0o600)
        except BaseException:
            os.close(self._mfd)
            raise
        try:
            self._lock_metadata(lock_wait)
            if _create is not None:
                self._format(**_create)
            else:
                self._load()
        except BaseException:
            os.close(self._mfd)
            os.close(self._dfd)
            if _create is not None:  # a half-formatted pool must not look like one
                for name in (META_FILE, DATA_FILE):
                    try:
                        os.unlink(os.path.join(self.path, name))
                    except OSError:
                        pass
            raise
        self._closed = False
        self._out_of_space = False
        self._read_only = False
        self._queued = False
        self._low_fired = False
        self._last_commit = _time.monotonic()
        self._zeros = memoryview(bytes(self.block_size))

    def _lock_metadata(self, wait: float) -> None:
        """Like the kernel opening the metadata device O_EXCL: one writer at a time (waiting up to
        ``wait`` seconds for another holder to let go)."""
        deadline = _time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._mfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if _time.monotonic() >= deadline:
                    raise FailedPrecondition(f"thin pool '{self.path}'", "is open in another process or handle",
                                             fix="close it or stop its daemon (or ask the daemon through "
                                                 "labkit.thin.client.PoolClient) and retry") from None
                _time.sleep(0.02)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, *, data_size: int | str, block_size: int | str = "64K",
               low_water_mark: int | None = None, error_if_no_space: bool = True,
               on_low_water: Callable[[Pool], None] | None = None, metadata_size: int | str | None = None,
               node_capacity: int | None = None, commit_interval: float | None = 1.0) -> Pool:
        """Make a new pool directory ``path`` with an empty transaction 0.

        ``data_size`` is rounded down to whole blocks (at least one). ``node_capacity`` caps the
        entries of a B-tree node (default: what fits in 4 KiB) so that small examples grow deep trees.

        >>> import tempfile, os
        >>> Pool.create(os.path.join(tempfile.mkdtemp(), "p"), data_size="1M", block_size="96K")
        Traceback (most recent call last):
        labkit.errors.InvalidArgument: thin pool block_size '96K': must be 64 KiB..1 GiB in steps of 64 KiB: ...
        """
        bs = _block_size(block_size)
        size = parse_size(data_size, what="data_size")
        nr_data = size // bs
        if nr_data < 1:
            raise InvalidArgument(f"thin pool data_size {data_size!r}", "is smaller than one block",
                                  fix=f"give at least block_size ({bs} bytes)")
        if metadata_size is None:
            nr_meta = max(1024, nr_data // 8 + 2 * ((nr_data >> 10) + 64))
        else:
            nr_meta = parse_size(metadata_size, what="metadata_size") // BLOCK
            if nr_meta < 64:
                raise InvalidArgument(f"thin pool metadata_size {metadata_size!r}", "is below 256 KiB",
                                      fix="give at least '256K' or leave it out")
        if node_capacity is not None and node_capacity < 4:
            raise InvalidArgument(f"node_capacity {node_capacity}", "is below 4", fix="give 4 or more")
        path = os.path.abspath(path)
        if os.path.exists(os.path.join(path, META_FILE)):
            raise AlreadyExists(f"thin pool '{path}'", fix="open it with Pool.open(path) or pick another path")
        os.makedirs(path, exist_ok=True)
        return cls(path, low_water_mark=low_water_mark, error_if_no_space=error_if_no_space,
                   on_low_water=on_low_water, commit_interval=commit_interval,
                   _create=dict(nr_data=nr_data, bs=bs, nr_meta=nr_meta, cap=node_capacity or 0))

    @classmethod
    def open(cls, path: str, *, low_water_mark: int | None = None, error_if_no_space: bool = True,
             on_low_water: Callable[[Pool], None] | None = None,
             commit_interval: float | None = 1.0, lock_wait: float = 0.0) -> Pool:
        """Open an existing pool at its last committed transaction.

        Raises :class:`NotFound` if there is no pool and :class:`~labkit.errors.FailedPrecondition`
        (``MetadataError``) if the superblock or a space map is corrupt, or if another process holds the
        pool for longer than ``lock_wait`` seconds.
        """
        return cls(path, low_water_mark=low_water_mark, error_if_no_space=error_if_no_space,
                   on_low_water=on_low_water, commit_interval=commit_interval, lock_wait=lock_wait)

    def _format(self, nr_data: int, bs: int, nr_meta: int, cap: int) -> None:
        os.ftruncate(self._dfd, nr_data * bs)
        os.ftruncate(self._mfd, nr_meta * BLOCK)
        meta_sm, data_sm = SpaceMap(nr_meta), SpaceMap(nr_data)
        meta_sm.alloc()  # block 0: the superblock
        meta_sm.end_transaction()
        self.tm = TransactionManager(self._mfd, meta_sm, data_sm, cap)
        self.sb = Superblock(transaction_id=0, time=0, flags=0, node_capacity=cap, nr_metadata_blocks=nr_meta,
                             nr_data_blocks=nr_data, data_block_size=bs, device_root=0,
                             uuid=new_uuid())
        self.sb.device_root = btree.empty_tree(self.tm, KIND_DEVICES, DEVICE_WIDTH)
        self._devs: dict[int, DeviceDetails] = {}
        self._dirty_devs: set[int] = set()
        self._deleted: set[int] = set()
        self._changed = True
        self.tm.commit(self.sb, self._dfd)
        self._changed = False

    def _load(self) -> None:
        raw = os.pread(self._mfd, BLOCK, 0)
        sb = Superblock.decode(raw, f"'{self.path}'")
        fix = "run `labkit thin check` and restore from a dump"
        if os.fstat(self._mfd).st_size < sb.nr_metadata_blocks * BLOCK:
            raise MetadataError(f"thin pool '{self.path}' metadata file", "is shorter than its superblock says",
                                fix=fix)
        if os.fstat(self._dfd).st_size < sb.nr_data_blocks * sb.data_block_size:
            raise FailedPrecondition(f"thin pool '{self.path}' data file", "is shorter than the pool",
                                     fix="restore the data file or recreate the pool")
        if (len(sb.meta_index) != index_capacity(sb.nr_metadata_blocks)
                or len(sb.data_index) != index_capacity(sb.nr_data_blocks)):
            raise MetadataError(f"thin pool '{self.path}' superblock", "space map index is malformed", fix=fix)
        meta_sm = load_spacemap(self._mfd, sb.nr_metadata_blocks, sb.meta_index, "metadata")
        data_sm = load_spacemap(self._mfd, sb.nr_data_blocks, sb.data_index, "data")
        self.sb = sb
        self.tm = TransactionManager(self._mfd, meta_sm, data_sm, sb.node_capacity)
        self._devs = {}
        for key, v in btree.items(self.tm, sb.device_root):
            self._devs[key] = DeviceDetails(*cast("tuple[int, ...]", v))   # the device tree's values
        self._dirty_devs = set()
        self._deleted = set()
        self._changed = False

    # -- properties -------------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        """Data block size in bytes."""
        return self.sb.data_block_size

    @property
    def nr_data_blocks(self) -> int:
        """Number of data blocks in the pool."""
        return self.sb.nr_data_blocks

    @property
    def transaction_id(self) -> int:
        """Id of the last committed transaction."""
        return self.sb.transaction_id

    @property
    def time(self) -> int:
        """The pool's snapshot clock (incremented by each snapshot; stamped on new mappings)."""
        return self.sb.time

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<thin Pool {self.path!r} transaction={self.sb.transaction_id} devices={sorted(self._devs)}>"

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"thin pool '{self.path}'", "is closed", fix="open it with Pool.open(path)")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise FailedPrecondition(f"thin pool '{self.path}'", "is read-only after a metadata failure",
                                     fix="close and reopen it (the last commit is intact)")

    def _details(self, dev_id: int) -> DeviceDetails:
        d = self._devs.get(dev_id)
        if d is None:
            raise NotFound(f"thin device {dev_id} in pool '{self.path}'", fix="list ids with pool.devices()")
        return d

    # -- devices ------------------------------------------------------------------------------
    def devices(self) -> list[int]:
        """Ids of the thin devices, sorted.

        >>> import tempfile, os
        >>> with Pool.create(os.path.join(tempfile.mkdtemp(), "p"), data_size="1M") as p:
        ...     p.create_thin(7, "1M"); p.create_snap(3, 7); p.devices()
        [3, 7]
        """
        with self._lock:
            self._check_open()
            return sorted(self._devs)

    def _new_id(self, dev_id: int) -> None:
        if not isinstance(dev_id, int) or isinstance(dev_id, bool) or not 0 <= dev_id <= MAX_DEV_ID:
            raise InvalidArgument(f"thin device id {dev_id!r}", f"must be an integer 0..{MAX_DEV_ID}",
                                  fix="pick a small non-negative integer")
        if dev_id in self._devs:
            raise AlreadyExists(f"thin device {dev_id} in pool '{self.path}'", fix="pick an unused id")

    def create_thin(self, dev_id: int, virtual_size: int | str) -> None:
        """Create an empty thin device of ``virtual_size`` bytes (may exceed the pool: over-commit)."""
        with self._lock:
            self._check_writable()
            self._new_id(dev_id)
            size = parse_size(virtual_size, what="virtual_size")
            if size <= 0:
                raise InvalidArgument(f"thin device {dev_id} virtual_size {virtual_size!r}", "is zero",
                                      fix="give a size like '1G'")
            try:
                root = btree.empty_tree(self.tm, KIND_MAPPING, 1)
            except NoMetadataSpace:
                self._metadata_full()
            t = self.sb.time
            self._devs[dev_id] = DeviceDetails(root, 0, self.sb.transaction_id, t, t, size)
            self._deleted.discard(dev_id)
            self._dirty_devs.add(dev_id)
            self._changed = True

    def create_snap(self, dev_id: int, origin_id: int) -> None:
        """Create ``dev_id`` as a snapshot of ``origin_id``: share the origin's root (one refcount).

        No per-block work: the cost does not depend on how much the origin maps.
        """
        with self._lock:
            self._check_writable()
            self._new_id(dev_id)
            o = self._details(origin_id)
            self._quiesce()
            self.tm.meta_sm.inc(o.root)
            # like the kernel: tick the clock, stamp both; mappings older than snap_time count as shared
            t = self.sb.time = (self.sb.time + 1) & TIME_MASK
            o.snap_time = t
            self._devs[dev_id] = DeviceDetails(o.root, o.mapped_blocks, self.sb.transaction_id, t, t,
                                               o.virtual_size)
            self._deleted.discard(dev_id)
            self._dirty_devs.update((dev_id, origin_id))
            self._changed = True

    def delete(self, dev_id: int) -> None:
        """Delete a thin device. Its snapshots (and its origin) stay whole; blocks only it used are
        freed after the next commit."""
        with self._lock:
            self._check_writable()
            d = self._details(dev_id)
            self._quiesce()
            btree.del_tree(self.tm, d.root)
            del self._devs[dev_id]
            self._dirty_devs.discard(dev_id)
            self._deleted.add(dev_id)
            self._changed = True

    def device(self, dev_id: int) -> Device:
        """A handle for reading and writing thin device ``dev_id``."""
        with self._lock:
            self._check_open()
            self._details(dev_id)
            return Device(self, dev_id)

    # -- data path ----------------------------------------------------------------------------
    def _metadata_full(self) -> None:
        self._read_only = True
        raise PoolFull(f"thin pool '{self.path}'", "is out of metadata space; now read-only",
                       fix="close and reopen it, delete devices, or recreate it with a larger metadata_size")

    def _alloc_data(self, before_commit: Callable[[], None] | None = None) -> int:
        """A free data block (count 1). When none is free but blocks freed in this transaction wait for a
        commit, commits first (calling ``before_commit``: the caller's data writes must land before it)."""
        dsm = self.tm.data_sm
        try:
            b = dsm.alloc()
        except NoSpace:
            b = -1
            if dsm.nr_pending_free:  # like dm-thin: commit to release blocks freed in this transaction
                if before_commit is not None:
                    before_commit()
                self._commit_locked()
                try:
                    b = dsm.alloc()
                except NoSpace:
                    pass
            if b < 0:
                self._out_of_space = True
                if not self.error_if_no_space:
                    self._queued = True
                raise PoolFull(f"thin pool '{self.path}'", "is out of data space",
                               fix="discard or delete devices, then retry") from None
        lwm = self.low_water_mark
        if lwm is not None and not self._low_fired and dsm.nr_free <= lwm:
            self._low_fired = True
            if self.on_low_water is not None:
                self.on_low_water(self)
        return b

    def _space_recovered(self) -> None:
        dsm = self.tm.data_sm
        if self._out_of_space and dsm.nr_free > 0:
            self._out_of_space = False
            self._queued = False
        if self._low_fired and (self.low_water_mark is None or dsm.nr_free > self.low_water_mark):
            self._low_fired = False

    def _commit_due(self) -> bool:
        return len(self.tm.dirty) > 8192 or (self.commit_interval is not None
                                             and _time.monotonic() - self._last_commit >= self.commit_interval)

    def _maybe_commit(self) -> None:
        if self._commit_due():
            self._commit_locked()

    # Data I/O outside the lock. A write maps its blocks under the lock and copies the bytes after letting
    # go of it, so several FUSE threads overlap their copies (the GIL is released in pwrite/preadv). That
    # is safe because (1) a commit first waits for every such copy, so no mapping becomes durable before
    # its data, and a block freed meanwhile is reused only after a commit; (2) a snapshot, a delete and a
    # discard wait too, so a block being written is never shared, copied or handed to another device.
    # Partial writes of new or newly unshared blocks (zero fill, copy of the old block) stay under the lock.
    def _io_begin(self) -> None:
        with self._io:
            self._inflight += 1

    def _io_end(self) -> None:
        with self._io:
            self._inflight -= 1
            if not self._inflight:
                self._io.notify_all()

    def _quiesce(self) -> None:
        """Wait (holding the pool lock, so no new I/O starts) until no data I/O is in flight."""
        with self._io:
            while self._inflight:
                self._io.wait()

    def _write(self, dev_id: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            self._check_writable()
            d = self._details(dev_id)
            length = len(data)
            if offset < 0 or offset + length > d.virtual_size:
                raise InvalidArgument(f"write of {length} bytes at {offset} to thin device {dev_id}",
                                      f"lies outside its {d.virtual_size} bytes", fix="stay within device.size")
            if length == 0:
                return
            tm, bs, dfd = self.tm, self.block_size, self._dfd
            dsm_counts = tm.data_sm.counts
            mv = memoryview(data).cast("B")
            t = self.sb.time
            snap_time = d.snap_time
            pos = 0
            self._changed = True
            dirty = self._dirty_devs
            # whole-block and in-place chunks are queued as runs of consecutive data blocks (a 1 MiB
            # request on fresh blocks: one pwrite instead of 16) and copied after the lock is released;
            # partial chunks of new or newly unshared blocks are written at once. If the allocator must
            # commit, or an error leaves the call, the queue is written first, under the lock.
            runs: list[list[int]] = []  # [data file offset, source offset, length]

            def flush() -> None:
                for off, src, n in runs:
                    os.pwrite(dfd, mv[src:src + n], off)
                runs.clear()

            try:
                while pos < length:
                    vb, boff = divmod(offset + pos, bs)
                    n = min(bs - boff, length - pos)
                    val, shared = btree.mapping_lookup(tm, d.root, vb)
                    if val is not None:
                        db = val >> 24
                        # in place only if mapped since the device's last snapshot (dm-thin's test, which
                        # also keeps committed blocks of other devices safe) and really unshared now
                        if (val & TIME_MASK) >= snap_time and not shared and dsm_counts[db] == 1:
                            target = db * bs + boff
                        else:
                            nb = self._alloc_data(flush)  # shared: break sharing
                            if n < bs:
                                buf = bytearray(os.pread(dfd, bs, db * bs))
                                buf[boff:boff + n] = mv[pos:pos + n]
                                os.pwrite(dfd, buf, nb * bs)
                                target = -1
                            else:
                                target = nb * bs
                            d.root, _ = btree.insert(tm, d.root, vb, (nb << 24) | t)
                            dirty.add(dev_id)  # again: _alloc_data may have committed
                    else:
                        nb = self._alloc_data(flush)
                        if n < bs:
                            buf = bytearray(bs)
                            buf[boff:boff + n] = mv[pos:pos + n]
                            os.pwrite(dfd, buf, nb * bs)
                            target = -1
                        else:
                            target = nb * bs
                        d.root, _ = btree.insert(tm, d.root, vb, (nb << 24) | t)
                        d.mapped_blocks += 1
                        dirty.add(dev_id)
                    if target >= 0:
                        last = runs[-1] if runs else None
                        if last is not None and last[0] + last[2] == target and last[1] + last[2] == pos:
                            last[2] += n
                        else:
                            runs.append([target, pos, n])
                    pos += n
            except BaseException:
                flush()  # blocks written before an error stay written, as on a disk
                if isinstance(sys.exc_info()[1], NoMetadataSpace):
                    self._metadata_full()
                raise
            if not runs:
                self._maybe_commit()
                return
            self._io_begin()
        try:
            for off, src, n in runs:
                os.pwrite(dfd, mv[src:src + n], off)
                if EARLY_WRITEBACK and n >= EARLY_WRITEBACK:
                    _sync_file_range(dfd, off, n, SYNC_FILE_RANGE_WRITE)   # a hint: its result is ignored
        finally:
            self._io_end()
        if self._commit_due():
            with self._lock:
                if not self._closed and not self._read_only:
                    self._maybe_commit()

    def _read_into(self, dev_id: int, offset: int, out: memoryview) -> int:
        """Fill ``out`` (a writable byte buffer) from ``offset``; return the bytes read (short at the end
        of the device). Unmapped blocks read as zeros; consecutive data blocks are read with one preadv,
        straight into ``out`` (no intermediate bytes objects), after the lock is released."""
        with self._lock:
            self._check_open()
            d = self._details(dev_id)
            if offset < 0:
                raise InvalidArgument(f"read at {offset}", "is negative", fix="use offsets >= 0")
            length = max(0, min(len(out), d.virtual_size - offset))
            tm, bs, dfd = self.tm, self.block_size, self._dfd
            zeros = self._zeros
            runs: list[list[int]] = []  # [data file offset, destination offset, length]
            pos = 0
            while pos < length:
                vb, boff = divmod(offset + pos, bs)
                n = min(bs - boff, length - pos)
                val, _ = btree.mapping_lookup(tm, d.root, vb)
                if val is None:
                    out[pos:pos + n] = zeros[:n]
                else:
                    src = (val >> 24) * bs + boff
                    last = runs[-1] if runs else None
                    if last is not None and last[0] + last[2] == src and last[1] + last[2] == pos:
                        last[2] += n
                    else:
                        runs.append([src, pos, n])
                pos += n
            if not runs:
                return length
            self._io_begin()
        try:
            for src, dst, n in runs:
                got = os.preadv(dfd, [out[dst:dst + n]], src)
                if got < n:  # cannot happen with a data file of full size; never hand out garbage
                    out[dst + got:dst + n] = bytes(n - got)
        finally:
            self._io_end()
        return length

    def _read(self, dev_id: int, offset: int, length: int) -> bytes:
        if length < 0:
            raise InvalidArgument(f"read at {offset} of {length} bytes", "is negative", fix="use offsets >= 0")
        with self._lock:
            self._check_open()
            size = self._details(dev_id).virtual_size
            out = bytearray(max(0, min(length, size - offset)))
            self._read_into(dev_id, offset, memoryview(out))
            return bytes(out)

    def _discard(self, dev_id: int, offset: int, length: int) -> None:
        with self._lock:
            self._check_writable()
            d = self._details(dev_id)
            if offset < 0 or length < 0 or offset + length > d.virtual_size:
                raise InvalidArgument(f"discard of {length} bytes at {offset} on thin device {dev_id}",
                                      "lies outside the device", fix="stay within device.size")
            bs = self.block_size
            first = -(-offset // bs)
            end = (offset + length) // bs
            if end <= first:
                return
            self._quiesce()
            self._changed = True
            self._dirty_devs.add(dev_id)
            try:
                keys = []
                for k, _v in btree.items(self.tm, d.root, first):
                    if k >= end:
                        break
                    keys.append(k)
                for vb in keys:
                    d.root, old = btree.remove(self.tm, d.root, vb)
                    if old is not None:
                        d.mapped_blocks -= 1
            except NoMetadataSpace:
                self._metadata_full()
            self._space_recovered()
            self._maybe_commit()

    # -- transactions -------------------------------------------------------------------------
    def _sync_devices(self) -> None:
        """Write the in-memory device details into the device tree (values carry no extra refs)."""
        tm = self.tm
        root = self.sb.device_root
        for dev_id in sorted(self._deleted):
            if dev_id not in self._devs:
                root, _ = btree.remove(tm, root, dev_id, dec=False)
        for dev_id in sorted(self._dirty_devs):
            root, _ = btree.insert(tm, root, dev_id, self._devs[dev_id].as_tuple(), dec_old=False)
        self.sb.device_root = root
        self._deleted.clear()
        self._dirty_devs.clear()

    def _commit_locked(self) -> None:
        self._quiesce()
        self._last_commit = _time.monotonic()
        tm = self.tm
        if not (self._changed or self._dirty_devs or self._deleted or tm.dirty or tm.meta_sm.dirty_chunks()
                or tm.data_sm.dirty_chunks()):
            return
        try:
            self._sync_devices()
            self.sb.transaction_id += 1
            self.tm.commit(self.sb, self._dfd)
        except NoMetadataSpace:
            self._metadata_full()
        self._changed = False
        self._space_recovered()

    def commit(self) -> int:
        """Make every change durable (two-phase commit); return the transaction id.

        Nothing changed: nothing is written and the id stays.
        """
        with self._lock:
            self._check_writable()
            self._commit_locked()
            return self.sb.transaction_id

    def close(self) -> None:
        """Commit (unless read-only after a failure) and close the files. Closing twice is fine."""
        with self._lock:
            if self._closed:
                return
            try:
                if not self._read_only:
                    self._commit_locked()
            finally:
                self._closed = True
                self._quiesce()  # no copy outside the lock may outlive the descriptors
                os.close(self._mfd)
                os.close(self._dfd)

    # -- inspection -----------------------------------------------------------------------------
    def status(self) -> Status:
        """The dm-thin status line as a dataclass (``str()`` gives the line)."""
        with self._lock:
            self._check_open()
            msm, dsm = self.tm.meta_sm, self.tm.data_sm
            if self._read_only:
                mode = "read_only"
            elif self._out_of_space:
                mode = "out_of_data_space"
            else:
                mode = "rw"
            lwm = self.low_water_mark
            return Status(self.sb.transaction_id, msm.nr_blocks - msm.nr_free, msm.nr_blocks,
                          dsm.nr_blocks - dsm.nr_free, dsm.nr_blocks, None, mode,
                          bool(self.sb.flags & NEEDS_CHECK), self.error_if_no_space,
                          lwm is not None and dsm.nr_free <= lwm, self._queued)

    def mappings(self, dev_id: int) -> list[tuple[int, int, int]]:
        """``(virtual block, data block, time)`` of every mapping of ``dev_id``, in order (a list, made
        under the lock, so no half-read generator can hold the pool)."""
        with self._lock:
            self._check_open()
            d = self._details(dev_id)
            return [(k, v >> 24, v & TIME_MASK) for k, v in btree.mapping_items(self.tm, d.root)]

    def _logical_refs(self) -> dict[int, int]:
        refs: dict[int, int] = {}
        get = refs.get
        for d in self._devs.values():
            for _k, v in btree.mapping_items(self.tm, d.root):
                b = v >> 24
                refs[b] = get(b, 0) + 1
        return refs

    def usage(self, dev_id: int) -> Usage:
        """Mapped, exclusive and shared block counts of ``dev_id`` (thin_ls's MAPPED_BLOCKS,
        EXCLUSIVE_BLOCKS, SHARED_BLOCKS: a block is exclusive when no other mapping of any device
        uses its data block)."""
        with self._lock:
            self._check_open()
            d = self._details(dev_id)
            refs = self._logical_refs()
            excl = sum(1 for _k, v in btree.mapping_items(self.tm, d.root) if refs[v >> 24] == 1)
            return Usage(d.mapped_blocks, excl, d.mapped_blocks - excl)

    def usages(self) -> dict[int, Usage]:
        """:meth:`usage` of every device, from one walk of all mappings.

        >>> import tempfile, os
        >>> with Pool.create(os.path.join(tempfile.mkdtemp(), "p"), data_size="1M") as p:
        ...     p.create_thin(1, "1M"); p.device(1).write(0, b"x"); p.create_snap(2, 1); p.usages()[2]
        Usage(mapped_blocks=1, exclusive_blocks=0, shared_blocks=1)
        """
        with self._lock:
            self._check_open()
            refs = self._logical_refs()
            out = {}
            for dev_id in sorted(self._devs):
                d = self._devs[dev_id]
                excl = sum(1 for _k, v in btree.mapping_items(self.tm, d.root) if refs[v >> 24] == 1)
                out[dev_id] = Usage(d.mapped_blocks, excl, d.mapped_blocks - excl)
            return out

    def block_map(self, dev_id: int) -> list[BlockInfo]:
        """One :class:`BlockInfo` per virtual block of ``dev_id`` (for drawing sharing)."""
        with self._lock:
            self._check_open()
            d = self._details(dev_id)
            refs = self._logical_refs()
            n = -(-d.virtual_size // self.block_size)
            out = [BlockInfo("unmapped", None)] * n
            for k, v in btree.mapping_items(self.tm, d.root):
                b = v >> 24
                out[k] = BlockInfo("exclusive" if refs[b] == 1 else "shared", b)
            return out

    def sharing(self, dev_id: int) -> list[tuple[int, int, tuple[int, ...]]]:
        """``(virtual block, data block, other devices mapping that data block)`` for every mapping of
        ``dev_id``, the others sorted by id: who shares what, from one walk of all mappings.

        >>> import tempfile, os
        >>> with Pool.create(os.path.join(tempfile.mkdtemp(), "p"), data_size="1M") as p:
        ...     p.create_thin(1, "1M"); p.device(1).write(0, b"x" * 70000); p.create_snap(2, 1)
        ...     p.device(2).write(0, b"y"); p.sharing(2)
        [(0, 2, ()), (1, 1, (1,))]
        """
        with self._lock:
            self._check_open()
            mine = [(k, v >> 24) for k, v in btree.mapping_items(self.tm, self._details(dev_id).root)]
            wanted: dict[int, list[int]] = {db: [] for _vb, db in mine}
            for other in sorted(self._devs):
                if other == dev_id:
                    continue
                for _k, v in btree.mapping_items(self.tm, self._devs[other].root):
                    sharers = wanted.get(v >> 24)
                    if sharers is not None and (not sharers or sharers[-1] != other):
                        sharers.append(other)
            return [(vb, db, tuple(wanted[db])) for vb, db in mine]

    def details(self, dev_id: int) -> DeviceDetails:
        """A copy of what the pool records about ``dev_id``."""
        with self._lock:
            d = self._details(dev_id)
            return DeviceDetails(*d.as_tuple())

    def check(self) -> CheckReport:
        """Verify every tree and every reference count against a full recount (like thin_check).

        >>> import tempfile, os
        >>> with Pool.create(os.path.join(tempfile.mkdtemp(), "p"), data_size="1M") as p:
        ...     p.create_thin(1, "1M"); p.device(1).write(0, b"x"); p.check().ok
        True
        """
        with self._lock:
            self._check_open()
            self._sync_devices()
            return check_metadata(self.tm, self.sb, self._devs)

    # -- thin_dump XML ----------------------------------------------------------------------------
    def dump_xml(self, fp: IO[str]) -> None:
        """Write the pool's metadata as thin_dump XML to the text file ``fp`` (commits first)."""
        from .xml import XmlDevice, XmlSuperblock, write_xml
        with self._lock:
            self._check_open()
            if not self._read_only:
                self._commit_locked()
            sb = self.sb

            def devices() -> Iterator[tuple[int, XmlDevice, Iterator[tuple[int, int, int]]]]:
                for dev_id in sorted(self._devs):
                    d = self._devs[dev_id]
                    maps = ((k, v >> 24, v & TIME_MASK) for k, v in btree.mapping_items(self.tm, d.root))
                    yield dev_id, XmlDevice(dev_id, d.mapped_blocks, d.transaction_id, d.creation_time,
                                            d.snap_time), maps

            write_xml(fp, XmlSuperblock(sb.time, sb.transaction_id, self.block_size, sb.nr_data_blocks), devices())

    @classmethod
    def restore_xml(cls, fp: IO[Any], path: str, *, virtual_sizes: Mapping[int, int | str] | None = None,
                    **pool_options: Any) -> Pool:
        """Create a new pool at ``path`` holding the mappings and reference counts described by the
        thin_dump XML in ``fp``; returned open.

        The XML says nothing about sharing of tree nodes, so the pool gets one tree per device and data
        blocks counted once per mapping (as ``thin_restore`` does). It carries no virtual sizes either:
        ``virtual_sizes`` maps dev ids to sizes, and a device not named there gets the smallest size
        that holds its highest mapped block. Other keywords go to :meth:`create`. The data file starts
        sparse: its contents are the caller's business.

        >>> import io, tempfile, os
        >>> x = io.StringIO('<superblock uuid="" time="0" transaction="5" flags="0" version="2" '
        ...     'data_block_size="128" nr_data_blocks="8"><device dev_id="1" mapped_blocks="1" '
        ...     'transaction="0" creation_time="0" snap_time="0"><single_mapping origin_block="3" '
        ...     'data_block="6" time="0"/></device></superblock>')
        >>> p = Pool.restore_xml(x, os.path.join(tempfile.mkdtemp(), "p")); p.transaction_id, p.mappings(1)
        (5, [(3, 6, 0)])
        >>> p.close()
        """
        from .xml import XmlSuperblock, read_xml
        sizes = {k: parse_size(v, what="virtual size") for k, v in (virtual_sizes or {}).items()}
        pool: Pool | None = None
        try:
            for rec in read_xml(fp):
                if isinstance(rec, XmlSuperblock):
                    pool = cls.create(path, data_size=rec.nr_data_blocks * rec.block_size,
                                      block_size=rec.block_size, **pool_options)
                    pool._begin_restore(rec)
                else:
                    assert pool is not None  # read_xml yields the superblock first
                    pool._restore_record(rec, sizes)
        except BaseException:
            if pool is not None:
                pool.close()
            raise
        assert pool is not None
        pool._end_restore()
        return pool

    def _begin_restore(self, sb: XmlSuperblock) -> None:
        self._restore: dict[str, Any] = {"sb": sb, "dev": None, "max_block": -1, "top_data": 0}

    def _restore_record(self, rec: XmlDevice | XmlMapping | XmlDeviceEnd, sizes: Mapping[int, int]) -> None:
        from .xml import XmlDevice, XmlMapping
        st = self._restore
        if isinstance(rec, XmlDevice):
            self.create_thin(rec.dev_id, 1)
            d = self._devs[rec.dev_id]
            d.transaction_id, d.creation_time, d.snap_time = rec.transaction, rec.creation_time, rec.snap_time
            st["dev"], st["max_block"] = rec.dev_id, -1
        elif isinstance(rec, XmlMapping):
            dev_id = st["dev"]
            if rec.data + rec.length > self.nr_data_blocks:
                raise InvalidArgument(f"thin_dump XML mapping of device {dev_id} to data block "
                                      f"{rec.data + rec.length - 1}", f"is beyond nr_data_blocks {self.nr_data_blocks}",
                                      fix="check the file")
            tm, d = self.tm, self._devs[dev_id]
            for i in range(rec.length):
                tm.data_sm.inc(rec.data + i)
                d.root, old = btree.insert(tm, d.root, rec.origin + i, ((rec.data + i) << 24) | rec.time)
                if old is None:
                    d.mapped_blocks += 1
            st["max_block"] = max(st["max_block"], rec.origin + rec.length - 1)
            st["top_data"] = max(st["top_data"], rec.data + rec.length)
        else:
            d, top = self._devs[rec.dev_id], st["max_block"]
            d.virtual_size = sizes.get(rec.dev_id, max(1, top + 1) * self.block_size)
            if -(-d.virtual_size // self.block_size) <= top:
                raise InvalidArgument(f"virtual size of device {rec.dev_id}", "is smaller than its mappings",
                                      fix=f"give at least {(top + 1) * self.block_size} bytes")
            self._dirty_devs.add(rec.dev_id)
            st["dev"] = None

    def _end_restore(self) -> None:
        st = self._restore
        del self._restore
        self.tm.data_sm.start_at(st["top_data"])  # allocate after what the XML maps, like thin_restore
        self.sb.time = st["sb"].time
        self.sb.transaction_id = st["sb"].transaction - 1  # the commit below makes it the XML's
        self._changed = True
        self._commit_locked()


class Device:
    """A thin device: byte-addressed reads and writes; unwritten blocks read as zeros.

    >>> import tempfile, os
    >>> with Pool.create(os.path.join(tempfile.mkdtemp(), "p"), data_size="1M") as p:
    ...     p.create_thin(1, "256K"); dev = p.device(1)
    ...     dev.write(70000, b"abc"); dev.read(69999, 5), dev.size
    (b'\\x00abc\\x00', 262144)
    """

    def __init__(self, pool: Pool, dev_id: int) -> None:
        self.pool = pool
        self.dev_id = dev_id

    def __repr__(self) -> str:
        return f"<thin Device {self.dev_id} of {self.pool.path!r}>"

    @property
    def size(self) -> int:
        """Virtual size in bytes."""
        with self.pool._lock:
            return self.pool._details(self.dev_id).virtual_size

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; short at the end of the device, empty past it."""
        return self.pool._read(self.dev_id, offset, length)

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        """Read into ``buf`` (a writable buffer) from ``offset``; return how many bytes were read (short at
        the end of the device). What the FUSE export uses: no intermediate copies."""
        return self.pool._read_into(self.dev_id, offset, memoryview(buf).cast("B"))

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset`` (any alignment). Raises ``OSError(ENOSPC)`` (:class:`PoolFull`)
        when a block is needed and the pool is full; blocks written before that stay written."""
        self.pool._write(self.dev_id, offset, data)

    def discard(self, offset: int, length: int) -> None:
        """Unmap the blocks wholly inside ``[offset, offset+length)`` (partial blocks are left alone,
        as dm-thin does); data blocks nobody maps any more are free after the next commit."""
        self.pool._discard(self.dev_id, offset, length)

    def flush(self) -> None:
        """Commit the pool (dm-thin commits on REQ_FLUSH/FUA)."""
        self.pool.commit()
