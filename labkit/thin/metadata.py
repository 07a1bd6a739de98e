"""The metadata file: 4 KiB blocks, the superblock, B-tree nodes, space-map chunks and the transaction.

Layout (all integers little endian, every block carries a CRC32 of the rest of the block)::

    block 0        superblock   magic, version, transaction id, time, flags, block sizes and counts,
                                device-tree root, the two space maps' index block lists, node capacity
    other blocks   allocated from the metadata space map:
                   NODE   B-tree node: header, keys[u64], values[u64 * width]
                   INDEX  list of the metadata blocks holding a space map's count chunks
                   CHUNK  1024 reference counts (u32)

The :class:`TransactionManager` is persistent-data's ``dm_transaction_manager``: it reads nodes through a
bounded cache, *shadows* a node before it is changed (copy to a fresh block unless the node was created
in this transaction and is not shared), and commits in two phases: write every new block, fsync the
data and metadata files, then write and fsync the superblock. Blocks referenced by the last committed
superblock are never overwritten, so a crash at any moment reopens to the last commit.

>>> Node.capacity_for(1) # entries of a 4 KiB node with u64 keys and u64 values
254
"""
from __future__ import annotations

import os
import struct
import sys
import zlib
from array import array
from collections import OrderedDict
from typing import Any

from .._sys.record import Record, field
from ..errors import FailedPrecondition
from .spacemap import CHUNK, NoSpace, SpaceMap

BLOCK = 4096
SB_MAGIC = b"LKTHINSB"
SB_VERSION = 2
NODE_MAGIC = 0x4E4F4445  # "NODE"
INDEX_MAGIC = 0x494E4458  # "INDX"
CHUNK_MAGIC = 0x43484E4B  # "CHNK"
NODE_HDR = struct.Struct("<IIBBHIIQ")  # csum, magic, leaf, kind, width, nr, max, blocknr  (28 bytes)
NODE_HDR_SIZE = 32
INDEX_HDR = struct.Struct("<IIIIQ")  # csum, magic, count, pad, blocknr (24 bytes)
INDEX_PER_BLOCK = (BLOCK - INDEX_HDR.size) // 8
# chunk: a 4 KiB block of 1024 u32 counts; its checksum lives in the index entry (block, crc) pair.

KIND_MAPPING = 0  # a device's mapping tree: key virtual block, value (data block << 24) | time
KIND_DEVICES = 1  # the device tree: key dev id, value DeviceDetails words

NEEDS_CHECK = 1

_LITTLE = sys.byteorder == "little"


class MetadataError(FailedPrecondition):
    """The metadata is damaged (bad checksum, bad magic, impossible value)."""


class NoMetadataSpace(Exception):
    """The metadata file is full (internal)."""


class Node:
    """One B-tree node. ``values`` hold child blocks (internal nodes), or ints (width 1) or tuples of
    ``width`` ints (leaves): typed ``Any``, as only ``leaf`` and ``width`` say which.

    >>> n = Node(5, True, KIND_MAPPING, 1, [1, 2], [10, 20]); Node.decode(n.encode(), 5).keys
    [1, 2]
    """

    __slots__ = ("block", "leaf", "kind", "width", "keys", "values")

    def __init__(self, block: int, leaf: bool, kind: int, width: int, keys: list[int], values: list[Any]) -> None:
        self.block = block
        self.leaf = leaf
        self.kind = kind
        self.width = width
        self.keys = keys
        self.values = values

    @staticmethod
    def capacity_for(width: int) -> int:
        """How many entries fit in a 4 KiB node whose values are ``width`` u64 words."""
        return (BLOCK - NODE_HDR_SIZE) // (8 + 8 * width)

    def copy(self, block: int) -> Node:
        return Node(block, self.leaf, self.kind, self.width, list(self.keys), list(self.values))

    def encode(self) -> bytes:
        n = len(self.keys)
        width = self.width if self.leaf else 1
        body = array("Q", self.keys)
        if width == 1:
            body.extend(self.values)
        else:
            for v in self.values:
                body.extend(v)
        if not _LITTLE:
            body.byteswap()
        payload = body.tobytes()
        raw = bytearray(BLOCK)
        NODE_HDR.pack_into(raw, 0, 0, NODE_MAGIC, int(self.leaf), self.kind, self.width, n,
                           Node.capacity_for(width), self.block)
        raw[NODE_HDR_SIZE:NODE_HDR_SIZE + len(payload)] = payload
        struct.pack_into("<I", raw, 0, zlib.crc32(memoryview(raw)[4:]))
        return bytes(raw)

    @staticmethod
    def decode(raw: bytes, block: int) -> Node:
        csum, magic, leaf, kind, width, n, _mx, blocknr = NODE_HDR.unpack_from(raw, 0)
        if magic != NODE_MAGIC or csum != zlib.crc32(memoryview(raw)[4:]) or blocknr != block:
            raise MetadataError(f"thin pool metadata block {block}", "is not a valid B-tree node (checksum)",
                                fix="run `labkit thin check` and restore the pool from a dump")
        vw = width if leaf else 1
        words = array("Q")
        words.frombytes(raw[NODE_HDR_SIZE:NODE_HDR_SIZE + 8 * n * (1 + vw)])
        if not _LITTLE:
            words.byteswap()
        keys = words[:n].tolist()
        if vw == 1:
            values: list[Any] = words[n:].tolist()
        else:
            flat = words[n:].tolist()
            values = [tuple(flat[i:i + vw]) for i in range(0, len(flat), vw)]
        return Node(block, bool(leaf), kind, width, keys, values)


SB = struct.Struct("<I8sIQQIIQQQQQQQ")  # csum magic version tid time flags node_cap meta_blocks data_blocks
#                                           data_block_size devroot meta_idx_n data_idx_n reserved
SB_UUID = 128  # offset of the 16-byte uuid
SB_LISTS = 256  # offset of the index-block lists: meta ones then data ones (u64 each)


def uuid_text(raw: bytes) -> str:
    """16 bytes as a uuid's text (``str(uuid.UUID(bytes=raw))``, without the ``uuid`` module, whose import
    loads ``platform``: ~3 ms of every pool daemon's start).

    >>> uuid_text(bytes(range(16)))
    '00010203-0405-0607-0809-0a0b0c0d0e0f'
    """
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def new_uuid() -> str:
    """A random (version 4) uuid's text, as ``str(uuid.uuid4())``.

    >>> u = new_uuid(); len(u), u[14], u[19] in "89ab"
    (36, '4', True)
    """
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40            # version 4
    b[8] = (b[8] & 0x3F) | 0x80            # the RFC 4122 variant
    return uuid_text(bytes(b))


def uuid_bytes(text: str) -> bytes:
    """The 16 bytes of a uuid's text (``uuid.UUID(text).bytes``); ValueError when it is not one.

    >>> uuid_bytes("00010203-0405-0607-0809-0a0b0c0d0e0f") == bytes(range(16))
    True
    """
    h = text.replace("-", "")
    if len(h) != 32:
        raise ValueError(f"not a uuid: {text!r}")
    return bytes.fromhex(h)


class Superblock(Record, frozen=False):
    """The committed root of everything (``thin_disk_superblock`` in the kernel)."""

    transaction_id: int
    time: int
    flags: int
    node_capacity: int
    nr_metadata_blocks: int
    nr_data_blocks: int
    data_block_size: int
    device_root: int
    meta_index: list[int] = field(default_factory=list)
    data_index: list[int] = field(default_factory=list)
    uuid: str = ""

    def encode(self) -> bytes:
        raw = bytearray(BLOCK)
        SB.pack_into(raw, 0, 0, SB_MAGIC, SB_VERSION, self.transaction_id, self.time, self.flags,
                     self.node_capacity, self.nr_metadata_blocks, self.nr_data_blocks, self.data_block_size,
                     self.device_root, len(self.meta_index), len(self.data_index), 0)
        raw[SB_UUID:SB_UUID + 16] = uuid_bytes(self.uuid) if self.uuid else bytes(16)
        lists = self.meta_index + self.data_index
        if SB_LISTS + 8 * len(lists) > BLOCK:
            raise FailedPrecondition("thin pool superblock", "has no room for the space map index",
                                     fix="use a larger data block size")
        struct.pack_into(f"<{len(lists)}Q", raw, SB_LISTS, *lists)
        struct.pack_into("<I", raw, 0, zlib.crc32(memoryview(raw)[4:]))
        return bytes(raw)

    @staticmethod
    def decode(raw: bytes, where: str) -> Superblock:
        fix = "restore it from a dump (`labkit thin dump`) or recreate the pool"
        if len(raw) < BLOCK:
            raise MetadataError(f"thin pool {where}", "has no superblock (metadata file too short)", fix=fix)
        (csum, magic, version, tid, time, flags, cap, nmeta, ndata, dbs, devroot, nmi, ndi,
         _r) = SB.unpack_from(raw, 0)
        if magic != SB_MAGIC:
            raise MetadataError(f"thin pool {where}", "superblock has a bad magic number", fix=fix)
        if csum != zlib.crc32(memoryview(raw)[4:BLOCK]):
            raise MetadataError(f"thin pool {where}", "superblock checksum mismatch", fix=fix)
        if version != SB_VERSION:
            raise MetadataError(f"thin pool {where}", f"superblock version {version} is unknown", fix=fix)
        lists = list(struct.unpack_from(f"<{nmi + ndi}Q", raw, SB_LISTS))
        u = bytes(raw[SB_UUID:SB_UUID + 16])
        return Superblock(tid, time, flags, cap, nmeta, ndata, dbs, devroot, lists[:nmi], lists[nmi:],
                          uuid_text(u) if any(u) else "")


class Stats:
    """Counters of metadata work, for measuring what an operation costs (not how long it takes)."""

    __slots__ = ("node_reads", "node_shadows", "node_allocs")

    def __init__(self) -> None:
        self.node_reads = self.node_shadows = self.node_allocs = 0


class TransactionManager:
    """Reads, shadows, allocates and commits metadata blocks of one pool.

    ``meta_sm`` counts references to metadata blocks, ``data_sm`` to data blocks. Nodes created in the
    current transaction live in ``dirty`` until commit; clean nodes sit in a bounded LRU cache.
    """

    CACHE_NODES = 4096

    def __init__(self, fd: int, meta_sm: SpaceMap, data_sm: SpaceMap, node_capacity: int) -> None:
        self.fd = fd
        self.meta_sm = meta_sm
        self.data_sm = data_sm
        self.node_capacity = node_capacity
        self.dirty: dict[int, Node] = {}
        self.cache: OrderedDict[int, Node] = OrderedDict()
        self.stats = Stats()

    # -- nodes -----------------------------------------------------------------------------------
    def capacity(self, node: Node) -> int:
        width = node.width if node.leaf else 1
        full = Node.capacity_for(width)
        return min(full, self.node_capacity) if self.node_capacity else full

    def read(self, b: int) -> Node:
        """The node in block ``b`` (new ones from memory, old ones through the cache)."""
        n = self.dirty.get(b)
        if n is not None:
            return n
        n = self.cache.get(b)
        if n is not None:
            self.cache.move_to_end(b)
            return n
        self.stats.node_reads += 1
        raw = os.pread(self.fd, BLOCK, b * BLOCK)
        if len(raw) < BLOCK:
            raise MetadataError(f"thin pool metadata block {b}", "lies past the end of the metadata file",
                                fix="run `labkit thin check`")
        n = Node.decode(raw, b)
        self.cache[b] = n
        if len(self.cache) > self.CACHE_NODES:
            self.cache.popitem(last=False)
        return n

    def alloc_block(self) -> int:
        try:
            return self.meta_sm.alloc()
        except NoSpace:
            raise NoMetadataSpace() from None

    def new_node(self, leaf: bool, kind: int, width: int) -> Node:
        """A fresh empty node in a newly allocated block (count 1)."""
        b = self.alloc_block()
        self.stats.node_allocs += 1
        n = Node(b, leaf, kind, width, [], [])
        self.cache.pop(b, None)
        self.dirty[b] = n
        return n

    def inc_children(self, node: Node) -> None:
        """A shared node was copied: everything it points at gains a reference."""
        if not node.leaf:
            for c in node.values:
                self.meta_sm.inc(c)
        elif node.kind == KIND_MAPPING:
            for v in node.values:
                self.data_sm.inc(v >> 24)
        else:
            for v in node.values:
                self.meta_sm.inc(v[0])

    def shadow(self, b: int) -> Node:
        """Return a writable version of node ``b``: itself if new and unshared, else a copy.

        Copying a shared node (count > 1) adds a reference to each child; the old node loses one.
        """
        sm = self.meta_sm
        if sm.is_new(b) and sm.counts[b] == 1:
            return self.dirty[b]
        old = self.read(b)
        shared = sm.counts[b] > 1
        self.stats.node_shadows += 1
        nb = self.alloc_block()
        n = old.copy(nb)
        self.dirty[nb] = n
        self.cache.pop(nb, None)
        if shared:
            self.inc_children(n)
        self.release(b)
        return n

    def release(self, b: int) -> int:
        """Drop one reference to metadata block ``b`` (no recursion); forget it when it is free."""
        c = self.meta_sm.dec(b)
        if c == 0:
            self.dirty.pop(b, None)
            self.cache.pop(b, None)
        return c

    # -- commit ----------------------------------------------------------------------------------
    def _persist_spacemaps(self) -> list[tuple[int, bytes]]:
        """Relocate changed count chunks and all index blocks to fresh blocks (to a fixed point)."""
        msm, dsm = self.meta_sm, self.data_sm
        for sm in (dsm, msm):
            new = [self.alloc_block() for _ in range(index_capacity(sm.nr_blocks))]
            for b in sm.index_locs:
                msm.dec(b)
            sm.index_locs = new
        moved: dict[int, set[int]] = {id(dsm): set(), id(msm): set()}
        changed = True
        while changed:
            changed = False
            for sm in (dsm, msm):
                done = moved[id(sm)]
                for c in sorted(sm.dirty_chunks() - done):
                    done.add(c)
                    changed = True
                    nb = self.alloc_block()
                    old = sm.chunk_locs[c]
                    if old:
                        msm.dec(old)
                    sm.chunk_locs[c] = nb
        writes: list[tuple[int, bytes]] = []
        for sm in (dsm, msm):
            for c in moved[id(sm)]:
                raw = sm.chunk_bytes(c)
                sm.chunk_crcs[c] = zlib.crc32(raw)
                writes.append((sm.chunk_locs[c], raw))
            for i, ib in enumerate(sm.index_locs):
                writes.append((ib, self._index_block(ib, sm, sm.chunk_crcs, i)))
        return writes

    @staticmethod
    def _index_block(ib: int, sm: SpaceMap, crcs: list[int], i: int) -> bytes:
        per = INDEX_PER_BLOCK // 2  # (location, crc) pairs
        lo = i * per
        locs = sm.chunk_locs[lo:lo + per]
        words: list[int] = []
        for j, loc in enumerate(locs):
            words += [loc, crcs[lo + j]]
        raw = bytearray(BLOCK)
        INDEX_HDR.pack_into(raw, 0, 0, INDEX_MAGIC, len(locs), 0, ib)
        struct.pack_into(f"<{len(words)}Q", raw, INDEX_HDR.size, *words)
        struct.pack_into("<I", raw, 0, zlib.crc32(memoryview(raw)[4:]))
        return bytes(raw)

    def commit(self, sb: Superblock, data_fd: int) -> None:
        """Two-phase commit: new blocks, fsync both files, then the superblock, fsync."""
        writes = self._persist_spacemaps()
        sb.meta_index = list(self.meta_sm.index_locs)
        sb.data_index = list(self.data_sm.index_locs)
        fd = self.fd
        for b, n in self.dirty.items():
            os.pwrite(fd, n.encode(), b * BLOCK)
        for b, raw in writes:
            os.pwrite(fd, raw, b * BLOCK)
        os.fsync(data_fd)
        os.fsync(fd)
        os.pwrite(fd, sb.encode(), 0)  # phase two: the single switch to the new state
        os.fsync(fd)
        for b, n in self.dirty.items():
            self.cache[b] = n
        while len(self.cache) > self.CACHE_NODES:
            self.cache.popitem(last=False)
        self.dirty.clear()
        self.meta_sm.end_transaction()
        self.data_sm.end_transaction()


def index_capacity(nr_blocks: int) -> int:
    """How many index blocks a space map of ``nr_blocks`` needs."""
    chunks = (nr_blocks + CHUNK - 1) // CHUNK
    return (chunks + INDEX_PER_BLOCK // 2 - 1) // (INDEX_PER_BLOCK // 2)


def load_spacemap(fd: int, nr_blocks: int, index: list[int], what: str) -> SpaceMap:
    """Read a space map's counts from its index blocks, verifying every checksum."""
    counts = array("I")
    locs: list[int] = []
    crcs: list[int] = []
    fix = "run `labkit thin check`; restore the pool from a dump"
    nchunks = (nr_blocks + CHUNK - 1) // CHUNK
    for ib in index:
        raw = os.pread(fd, BLOCK, ib * BLOCK)
        if len(raw) < BLOCK:
            raise MetadataError(f"thin pool {what} space map index block {ib}", "is missing", fix=fix)
        csum, magic, n, _pad, blocknr = INDEX_HDR.unpack_from(raw, 0)
        if magic != INDEX_MAGIC or blocknr != ib or csum != zlib.crc32(memoryview(raw)[4:]):
            raise MetadataError(f"thin pool {what} space map index block {ib}", "is corrupt", fix=fix)
        words = struct.unpack_from(f"<{2 * n}Q", raw, INDEX_HDR.size)
        for j in range(n):
            loc, crc = words[2 * j], words[2 * j + 1]
            chunk = os.pread(fd, BLOCK, loc * BLOCK) if loc else bytes(BLOCK)
            if loc and zlib.crc32(chunk) != crc:
                raise MetadataError(f"thin pool {what} space map chunk {loc}", "checksum mismatch", fix=fix)
            a = array("I")
            a.frombytes(chunk)
            if not _LITTLE:
                a.byteswap()
            counts.extend(a)
            locs.append(loc)
            crcs.append(crc)
    if len(locs) != nchunks:
        raise MetadataError(f"thin pool {what} space map", "has the wrong number of chunks", fix=fix)
    del counts[nr_blocks:]
    sm = SpaceMap(nr_blocks, counts)
    sm.chunk_locs = locs
    sm.chunk_crcs = crcs
    sm.index_locs = list(index)
    return sm
