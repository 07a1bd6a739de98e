"""Space maps: one reference count per block, for the metadata file and for the data file.

The kernel keeps a reference count for every metadata block and every data block (persistent-data's
``sm_disk`` and ``sm_metadata``). A block is free when its count is 0. Two rules make transactions safe:

* a block whose count drops to 0 during a transaction is *not* handed out again until the transaction
  has committed, because the last committed superblock may still point at it (the kernel allocates only
  blocks that are free both in the committed and in the current counts);
* a block allocated and freed inside the same transaction may be reused at once.

labkit holds the counts in a compact ``array('I')`` (4 bytes a block) and writes the changed 1024-entry
chunks to fresh metadata blocks at commit (see :mod:`labkit.thin.metadata`).

>>> sm = SpaceMap(8)
>>> b = sm.alloc(); sm.inc(b); sm.count(b)
2
>>> _ = sm.dec(b); _ = sm.dec(b); sm.nr_free
8
"""
from __future__ import annotations

from array import array

CHUNK = 1024  # counts per persisted chunk (4 KiB of little-endian u32)


class NoSpace(Exception):
    """No block is free (internal; the pool turns it into ``OSError(ENOSPC)``)."""


class SpaceMap:
    """Reference counts of ``nr_blocks`` blocks with transaction-aware allocation.

    >>> sm = SpaceMap(4); [sm.alloc() for _ in range(4)]
    [0, 1, 2, 3]
    """

    __slots__ = ("counts", "nr_blocks", "nr_free", "_new", "_freed", "_dirty", "_cursor",
                 "chunk_locs", "chunk_crcs", "index_locs", "ops")

    def __init__(self, nr_blocks: int, counts: array[int] | None = None) -> None:
        self.nr_blocks = nr_blocks
        self.counts = counts if counts is not None else array("I", bytes(4 * nr_blocks))
        if len(self.counts) != nr_blocks:
            raise ValueError("space map size mismatch")
        self.nr_free = self.counts.count(0)
        self._new: set[int] = set()      # allocated in this transaction
        self._freed: set[int] = set()    # dropped to 0 in this transaction, committed state still uses it
        self._dirty: set[int] = set()    # chunk numbers changed since the last commit
        self._cursor = 0
        self.chunk_locs: list[int] = [0] * ((nr_blocks + CHUNK - 1) // CHUNK)
        self.chunk_crcs: list[int] = [0] * len(self.chunk_locs)
        self.index_locs: list[int] = []
        self.ops = 0  # number of count changes, for cost measurements

    # -- counts -------------------------------------------------------------------------------
    def count(self, b: int) -> int:
        """Reference count of block ``b``."""
        return self.counts[b]

    def inc(self, b: int, n: int = 1) -> None:
        """Add ``n`` references to block ``b`` (which must be in use)."""
        c = self.counts[b]
        if c == 0:
            self.nr_free -= 1
        self.counts[b] = c + n
        self._dirty.add(b >> 10)
        self.ops += 1

    def dec(self, b: int) -> int:
        """Drop one reference to ``b``; return the new count. A block reaching 0 is free after commit."""
        c = self.counts[b]
        if c == 0:
            raise AssertionError(f"space map: block {b} already free")
        c -= 1
        self.counts[b] = c
        self._dirty.add(b >> 10)
        self.ops += 1
        if c == 0:
            self.nr_free += 1
            if b in self._new:
                self._new.discard(b)
            else:
                self._freed.add(b)
        return c

    def alloc(self) -> int:
        """Return a free block with count 1; never one freed in this (uncommitted) transaction."""
        if self.nr_free - len(self._freed) <= 0:
            raise NoSpace()
        counts = self.counts
        start = self._cursor
        for lo, hi in ((start, self.nr_blocks), (0, start)):
            i = lo
            while i < hi:
                try:
                    i = counts.index(0, i, hi)
                except ValueError:
                    break
                if i in self._freed:
                    i += 1
                    continue
                counts[i] = 1
                self.nr_free -= 1
                self._new.add(i)
                self._dirty.add(i >> 10)
                self._cursor = i + 1 if i + 1 < self.nr_blocks else 0
                self.ops += 1
                return i
        raise NoSpace()

    def start_at(self, b: int) -> None:
        """Make the next :meth:`alloc` look for a free block from ``b`` on (wrapping around), e.g. past
        the blocks a restored pool already maps.

        >>> sm = SpaceMap(4); sm.start_at(2); sm.alloc()
        2
        """
        self._cursor = b % self.nr_blocks if self.nr_blocks else 0

    @property
    def nr_allocatable(self) -> int:
        """Free blocks that may be handed out now (free minus those held until commit)."""
        return self.nr_free - len(self._freed)

    @property
    def nr_pending_free(self) -> int:
        """Blocks freed in this transaction, reusable after the next commit."""
        return len(self._freed)

    def is_new(self, b: int) -> bool:
        """True if ``b`` was allocated in the current transaction (so it may be changed in place)."""
        return b in self._new

    def dirty_chunks(self) -> set[int]:
        """Chunk numbers whose counts changed since the last commit."""
        return self._dirty

    def chunk_bytes(self, c: int) -> bytes:
        """The 4 KiB on-disk image of chunk ``c`` (zero padded)."""
        part = self.counts[c * CHUNK:(c + 1) * CHUNK].tobytes()
        return part + bytes(4 * CHUNK - len(part))

    def end_transaction(self) -> None:
        """Forget the per-transaction sets: freed blocks become allocatable."""
        self._new.clear()
        self._freed.clear()
        self._dirty.clear()
