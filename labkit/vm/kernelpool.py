"""The kernel's own dm-thin pool, driven the way Documentation/admin-guide/device-mapper/thin-provisioning.rst
says: a ``thin-pool`` table over two loop devices, target messages for create_thin / create_snap /
delete, one ``thin`` target per active device (device-mapper's ioctls through :mod:`labkit._sys.dm`,
which is what ``dmsetup create/message/suspend/resume/remove/status`` send), O_DIRECT writes and reads on
``/dev/mapper/<name>``, ``BLKDISCARD`` for discards, ``reserve_metadata_snap`` + ``thin_ls -m`` /
``thin_dump -m`` to look at the live metadata.

Runs where device-mapper with dm-thin exists — in labkit's VM (:mod:`labkit.vm.runner`), never on a host
without it. Only the standard library: the guest imports this over 9p under emulation, where every
imported module costs.

>>> with KernelPool.create("/run/labkit-vm/p", data_size=64 << 20) as kp:    # doctest: +SKIP
...     kp.create_thin(1, 4 << 20); kp.write(1, 0, b"x" * 4096); kp.commit()
...     kp.thin_ls()
{1: (1, 1, 0)}
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import stat
import struct
import subprocess
import time
from collections.abc import Iterable

from .._sys import dm, loop

__all__ = ["KernelPool", "block_hashes_of", "zero_hash", "parse_thin_ls", "hash_block", "dm_available"]

SECTOR = 512
PAGE = 4096
BLKDISCARD = 0x1277
BLKGETSIZE64 = 0x80081272


def hash_block(data: bytes | memoryview) -> str:
    """The hash labkit compares device blocks by (BLAKE2b, 16 bytes, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


_ZERO: dict[int, str] = {}


def zero_hash(block_size: int) -> str:
    """:func:`hash_block` of a block of zeros."""
    if block_size not in _ZERO:
        _ZERO[block_size] = hash_block(bytes(block_size))
    return _ZERO[block_size]


def dm_available() -> str | None:
    """None when this kernel has device-mapper's thin target (after ``modprobe dm_thin_pool``), else why not."""
    if not os.path.exists("/dev/mapper/control"):
        subprocess.run(["modprobe", "dm_thin_pool"], capture_output=True)
    if not os.path.exists("/dev/mapper/control"):
        return "no /dev/mapper/control (device-mapper missing)"
    return None if "thin-pool" in dm.targets() else "device-mapper lists no thin-pool target"


def _sh(*cmd: str, input: str | None = None) -> str:
    res = subprocess.run(list(cmd), capture_output=True, text=True, input=input)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {res.returncode}: {(res.stderr or res.stdout).strip()[-400:]}")
    return res.stdout


def block_hashes_of(path: str, size: int, block_size: int) -> list[str]:
    """:func:`hash_block` of every ``block_size`` block of the first ``size`` bytes of ``path``, read with
    O_DIRECT where the file allows it (so a block device is read from the device, not the page cache)."""
    flags = os.O_RDONLY | os.O_CLOEXEC
    direct = stat.S_ISBLK(os.stat(path).st_mode)
    fd = os.open(path, flags | (os.O_DIRECT if direct else 0))
    buf = mmap.mmap(-1, block_size)
    try:
        out = []
        for off in range(0, size, block_size):
            n = min(block_size, size - off)
            got = os.preadv(fd, [buf], off)
            if got < n:
                buf[got:n] = bytes(n - got)
            out.append(hash_block(memoryview(buf)[:n]))
        return out
    finally:
        buf.close()
        os.close(fd)


class KernelPool:
    """A thin-pool target over a metadata file and a data file (each on its own loop device).

    ``name`` prefixes every device-mapper name (``<name>-pool``, ``<name>-<dev>``). ``zeroing`` off
    adds ``skip_block_zeroing`` (what labkit's dmthin backend uses); ``error_if_no_space`` and
    ``discard_passdown`` are the table's feature arguments. Virtual sizes live in the table lines, as in
    dm-thin; the pool remembers them for the devices it activated.
    """

    def __init__(self, path: str, *, name: str = "lkvm", block_size: int = 64 << 10, zeroing: bool = True,
                 error_if_no_space: bool = True, discard_passdown: bool = False, low_water_mark: int = 0,
                 read_only: bool = False) -> None:
        self.path = path
        self.name = name
        self.block_size = block_size
        self.zeroing = zeroing
        self.error_if_no_space = error_if_no_space
        self.discard_passdown = discard_passdown
        self.low_water_mark = low_water_mark
        self.read_only = read_only
        self.meta_dev = ""
        self.data_dev = ""
        self.sizes: dict[int, int] = {}
        self._fds: dict[int, int] = {}
        self._buf = mmap.mmap(-1, 1 << 20)

    # -- life cycle ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, *, data_size: int, metadata_size: int = 16 << 20, **kw: object) -> KernelPool:
        """Make ``path/data`` and ``path/metadata`` (sparse), zero the metadata superblock, activate."""
        os.makedirs(path, exist_ok=True)
        for fname, size in (("data", data_size), ("metadata", metadata_size)):
            with open(os.path.join(path, fname), "wb") as f:
                f.truncate(size)
        kp = cls(path, **kw)  # type: ignore[arg-type]
        kp.activate()
        return kp

    @property
    def pool(self) -> str:
        return f"{self.name}-pool"

    def dm_name(self, dev: int) -> str:
        return f"{self.name}-{dev}"

    def attach(self, data_file: str | None = None, metadata_file: str | None = None) -> None:
        """Attach the files to loop devices (read-only data when the pool is read-only)."""
        meta = metadata_file or os.path.join(self.path, "metadata")
        data = data_file or os.path.join(self.path, "data")
        if not self.meta_dev:
            self.meta_dev = loop.attach(meta, name=f"{self.name}-meta")
        if not self.data_dev:
            self.data_dev = loop.attach(data, name=f"{self.name}-data", readonly=self.read_only)

    def table(self) -> str:
        """The thin-pool table line (``<start> <length> thin-pool <params>``)."""
        fd = os.open(self.data_dev, os.O_RDONLY)
        try:
            size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
        finally:
            os.close(fd)
        feats = []
        if not self.zeroing:
            feats.append("skip_block_zeroing")
        if not self.discard_passdown:
            feats.append("no_discard_passdown")
        if self.error_if_no_space:
            feats.append("error_if_no_space")
        if self.read_only:
            feats.append("read_only")
        nr = size // self.block_size
        return (f"0 {nr * self.block_size // SECTOR} thin-pool {self.meta_dev} {self.data_dev} "
                f"{self.block_size // SECTOR} {self.low_water_mark} {len(feats)} {' '.join(feats)}").strip()

    def activate(self, data_file: str | None = None, metadata_file: str | None = None) -> None:
        """Attach the loop devices and create the pool target (a zeroed superblock formats the metadata)."""
        self.attach(data_file, metadata_file)
        self.load_pool()

    def load_pool(self) -> None:
        """Create the pool target, or, when it exists, load a new table (e.g. a grown data device) and
        resume it (device-mapper suspends it around the swap)."""
        start, length, target, params = self.table().split(" ", 3)
        if dm.exists(self.pool):
            dm.table(self.pool, target, int(start), int(length), params)
            dm.resume(self.pool)
        else:
            dm.create(self.pool, target, int(start), int(length), params)

    def close(self) -> None:
        """Deactivate every device, remove the pool (it commits), detach the loop devices."""
        for dev in list(self._fds):
            self.deactivate(dev)
        for dev in list(self.sizes):
            if dm.exists(self.dm_name(dev)):
                dm.remove(self.dm_name(dev))
        if dm.exists(self.pool):
            dm.remove(self.pool)
        for loopdev in (self.data_dev, self.meta_dev):
            if loopdev:
                try:
                    loop.detach(loopdev)
                except OSError:
                    pass
        self.data_dev = self.meta_dev = ""
        if not self._buf.closed:
            self._buf.close()

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- messages and devices ---------------------------------------------------------------------------
    def message(self, msg: str) -> None:
        """``dmsetup message <pool> 0 <msg>``."""
        dm.message(self.pool, msg)

    def activate_dev(self, dev: int, size: int) -> str:
        """Create the ``thin`` target for ``dev`` (``size`` bytes) unless it is active; its path."""
        name = self.dm_name(dev)
        if not dm.exists(name):
            dm.create(name, "thin", 0, size // SECTOR, f"/dev/mapper/{self.pool} {dev}", readonly=self.read_only)
        self.sizes[dev] = size
        return f"/dev/mapper/{name}"

    def _fd(self, dev: int) -> int:
        if dev not in self._fds:
            self._fds[dev] = os.open(self.activate_dev(dev, self.sizes[dev]), os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
        return self._fds[dev]

    def deactivate(self, dev: int) -> None:
        """Close our descriptor and remove the device's target (its mappings stay in the pool)."""
        fd = self._fds.pop(dev, None)
        if fd is not None:
            os.fsync(fd)
            os.close(fd)
        if dm.exists(self.dm_name(dev)):
            dm.remove(self.dm_name(dev))

    def create_thin(self, dev: int, size: int) -> None:
        """``create_thin <dev>`` and activate it with ``size`` bytes."""
        self.message(f"create_thin {dev}")
        self.activate_dev(dev, size)

    def create_snap(self, dev: int, origin: int) -> None:
        """``create_snap <dev> <origin>``: the origin is suspended around the message (as the kernel's
        documentation requires for an active origin), the snapshot activated with the origin's size."""
        origin_name = self.dm_name(origin)
        active = dm.exists(origin_name)
        if active:
            if origin in self._fds:
                os.fsync(self._fds[origin])
            dm.suspend(origin_name)
        try:
            self.message(f"create_snap {dev} {origin}")
        finally:
            if active:
                dm.resume(origin_name)
        self.activate_dev(dev, self.sizes[origin])

    def delete(self, dev: int) -> None:
        """Deactivate, then ``delete <dev>``."""
        self.deactivate(dev)
        self.message(f"delete {dev}")
        self.sizes.pop(dev, None)

    def write(self, dev: int, offset: int, data: bytes) -> None:
        """O_DIRECT write (``offset`` and ``len(data)`` multiples of 4 KiB, at most 1 MiB)."""
        n = len(data)
        if offset % PAGE or n % PAGE or n > len(self._buf):
            raise ValueError(f"write of {n} bytes at {offset}: must be 4 KiB aligned and at most 1 MiB")
        self._buf[:n] = data
        done = os.pwritev(self._fd(dev), [memoryview(self._buf)[:n]], offset)
        if done != n:
            raise OSError(f"short write to {self.dm_name(dev)}: {done} of {n}")

    def discard(self, dev: int, offset: int, length: int) -> None:
        """``BLKDISCARD`` of the range (dm-thin unmaps only whole blocks inside it). EBUSY — the page cache
        could not be dropped because someone else (udev's blkid) was reading it; nothing was discarded —
        is retried."""
        for attempt in range(50):
            try:
                fcntl.ioctl(self._fd(dev), BLKDISCARD, struct.pack("QQ", offset, length))
                return
            except OSError as e:
                if e.errno != errno.EBUSY or attempt == 49:
                    raise
                time.sleep(0.1)

    def flush(self) -> None:
        """fsync every open device: REQ_PREFLUSH makes dm-thin commit its metadata."""
        for fd in self._fds.values():
            os.fsync(fd)

    commit = flush

    def read(self, dev: int, offset: int, length: int) -> bytes:
        """O_DIRECT read (4 KiB aligned)."""
        out = bytearray()
        fd = self._fd(dev)
        while length > 0:
            n = min(length, len(self._buf))
            got = os.preadv(fd, [memoryview(self._buf)[:n]], offset)
            out += self._buf[:got]
            if got < n:
                break
            offset += n
            length -= n
        return bytes(out)

    def block_hashes(self, dev: int) -> list[str]:
        """:func:`hash_block` of each pool-sized block of the device, read from the device (O_DIRECT)."""
        self.flush()
        return block_hashes_of(self.activate_dev(dev, self.sizes[dev]), self.sizes[dev], self.block_size)

    # -- looking at the pool ------------------------------------------------------------------------------
    def status(self) -> str:
        """``dmsetup status <pool>`` (one line)."""
        return dm.status(self.pool).strip()

    def _with_metadata_snap(self, cmds: Iterable[list[str]]) -> list[str]:
        self.flush()
        self.message("reserve_metadata_snap")
        try:
            return [_sh(*cmd) for cmd in cmds]
        finally:
            self.message("release_metadata_snap")

    def inspect(self) -> tuple[dict[int, tuple[int, int, int]], str]:
        """Under one metadata snapshot: ``thin_ls -m`` as {dev: (mapped, exclusive, shared)} and
        ``thin_dump -m`` XML."""
        ls, xml = self._with_metadata_snap([
            ["thin_ls", "-m", "--no-headers", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS", self.meta_dev],
            ["thin_dump", "-m", self.meta_dev]])
        return parse_thin_ls(ls), xml

    def thin_ls(self) -> dict[int, tuple[int, int, int]]:
        """``thin_ls -m``: {dev: (mapped, exclusive, shared)} blocks."""
        return self.inspect()[0]


def parse_thin_ls(text: str) -> dict[int, tuple[int, int, int]]:
    """``thin_ls --no-headers -o DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS`` output as a dict.

    >>> parse_thin_ls("1 3 1 2\\n7 0 0 0\\n")
    {1: (3, 1, 2), 7: (0, 0, 0)}
    """
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            out[int(parts[0])] = (int(parts[1]), int(parts[2]), int(parts[3]))
    return out
