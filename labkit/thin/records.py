"""The pool's records: device details, usage, block states, the status line, and the ENOSPC error.

>>> str(Status(3, 10, 100, 5, 50, None, "out_of_data_space", False, False, False, True))
'3 10/100 5/50 - out_of_data_space no_discard_passdown queue_if_no_space -'
"""
from __future__ import annotations

import errno
import os
from typing import NamedTuple

from .._sys.record import Record
from ..errors import FailedPrecondition, InvalidArgument


class PoolFull(FailedPrecondition, OSError):
    """The pool has no free data (or metadata) block: an ``OSError`` with errno ``ENOSPC``.

    >>> e = PoolFull("thin pool '/p'", "is out of data space"); e.errno == errno.ENOSPC
    True
    """

    def __init__(self, subject: str, detail: str | None = None, *, fix: str | None = None) -> None:
        FailedPrecondition.__init__(self, subject, detail, fix=fix)
        self.errno = errno.ENOSPC
        self.strerror = str(self.args[0]) if self.args else os.strerror(errno.ENOSPC)

    def __str__(self) -> str:
        return self.strerror or FailedPrecondition.__str__(self)


class DeviceDetails(Record, frozen=False):
    """What the pool records per thin device (``disk_device_details`` plus the virtual size)."""

    root: int
    mapped_blocks: int
    transaction_id: int
    creation_time: int
    snap_time: int
    virtual_size: int

    def as_tuple(self) -> tuple[int, ...]:
        return (self.root, self.mapped_blocks, self.transaction_id, self.creation_time, self.snap_time,
                self.virtual_size)


DEVICE_WIDTH = 6


class Usage(Record):
    """Block counts of one device, with thin_ls's meanings.

    ``mapped_blocks`` (MAPPED_BLOCKS): virtual blocks with a data block; ``exclusive_blocks``
    (EXCLUSIVE_BLOCKS): those whose data block no other mapping (of any device) uses;
    ``shared_blocks`` (SHARED_BLOCKS): the rest.
    """

    mapped_blocks: int
    exclusive_blocks: int
    shared_blocks: int


class BlockInfo(NamedTuple):
    """One virtual block of a device: ``state`` is "unmapped", "exclusive" or "shared"."""

    state: str
    data_block: int | None


class Status(Record):
    """The pool's status, as dm-thin's ``dmsetup status`` line (``str()`` renders it).

    >>> Status(3, 10, 100, 5, 50, None, "rw", False, True, False, False)
    Status(transaction_id=3, ...)
    >>> str(Status(3, 10, 100, 5, 50, None, "rw", False, True, False, False))
    '3 10/100 5/50 - rw no_discard_passdown error_if_no_space -'
    """

    transaction_id: int
    used_metadata_blocks: int
    total_metadata_blocks: int
    used_data_blocks: int
    total_data_blocks: int
    held_root: int | None
    mode: str  # "rw", "out_of_data_space" or "read_only"
    needs_check: bool
    error_if_no_space: bool
    low_water: bool  # free data blocks <= low_water_mark (dm-thin raises an event; not in the line)
    queued_io: bool  # error_if_no_space=False and a write failed: the kernel would have queued it

    def __repr__(self) -> str:  # keep the doctest short and stable
        return f"Status(transaction_id={self.transaction_id}, ...)"

    def explain(self) -> str:
        """The status line field by field, in words (what ``dmsetup status`` of a thin-pool prints).

        >>> print(Status(3, 10, 100, 5, 50, None, "rw", False, True, False, False).explain())
        3 10/100 5/50 - rw no_discard_passdown error_if_no_space -
          transaction id 3: metadata commits so far
          metadata blocks 10 used of 100
          data blocks 5 used of 50 (10%)
          held metadata root: none (no metadata snapshot reserved)
          mode rw: reads and writes are served
          discards are not passed down to the data device
          error_if_no_space: a write that needs a block when the pool is full fails at once
          needs_check: no
        """
        pct = 100 * self.used_data_blocks // self.total_data_blocks if self.total_data_blocks else 0
        modes = {"rw": "reads and writes are served",
                 "out_of_data_space": "the pool is full: writes that need a new block fail or queue",
                 "read_only": "metadata is read-only: no writes until it is repaired"}
        return "\n".join([
            str(self),
            f"  transaction id {self.transaction_id}: metadata commits so far",
            f"  metadata blocks {self.used_metadata_blocks} used of {self.total_metadata_blocks}",
            f"  data blocks {self.used_data_blocks} used of {self.total_data_blocks} ({pct}%)",
            "  held metadata root: " + ("none (no metadata snapshot reserved)" if self.held_root is None
                                        else f"block {self.held_root} (a metadata snapshot is reserved)"),
            f"  mode {({'read_only': 'ro'}).get(self.mode, self.mode)}: {modes.get(self.mode, self.mode)}",
            "  discards are not passed down to the data device",
            ("  error_if_no_space: a write that needs a block when the pool is full fails at once"
             if self.error_if_no_space else
             "  queue_if_no_space: a write that needs a block when the pool is full waits for space"),
            "  needs_check: " + ("yes: run a check before trusting the pool" if self.needs_check else "no"),
        ])

    @classmethod
    def parse(cls, line: str, *, low_water_mark: int | None = None) -> Status:
        """Read a status line back: ``str()`` of a Status, or what ``dmsetup status POOL`` prints for a
        kernel thin-pool (with its ``<start> <length> thin-pool`` prefix, ``ignore_discard`` or
        ``discard_passdown``, and the trailing metadata low-water threshold of newer kernels).

        ``low_water`` is not in the line: it is computed from ``low_water_mark`` (data blocks) when given.
        ``queued_io`` cannot be seen either; it is False. Raises
        :class:`~labkit.errors.FailedPrecondition` for a failed pool (``Fail``) and
        :class:`~labkit.errors.InvalidArgument` for anything else that is not a thin-pool status.

        >>> s = Status.parse("0 2097152 thin-pool 0 1650/16384 144/16384 - rw discard_passdown "
        ...                  "queue_if_no_space - 1024 ")      # Linux 6.1, dmsetup status
        >>> s.used_data_blocks, s.total_data_blocks, s.error_if_no_space, s.mode
        (144, 16384, False, 'rw')
        >>> str(Status.parse(str(s))) == str(s)
        True
        """
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "thin-pool":
            parts = parts[3:]
        if parts[:1] == ["Fail"]:
            raise FailedPrecondition("thin pool", "has failed (its status is Fail)",
                                     fix="deactivate it and run thin_check / thin_repair on its metadata")
        bad = InvalidArgument(f"thin-pool status line {line.strip()[:120]!r}", "does not parse",
                              fix="give the output of `dmsetup status <pool>` or str(pool.status())")
        if len(parts) < 8:
            raise bad
        try:
            tid = int(parts[0])
            um, tm = (int(x) for x in parts[1].split("/"))
            ud, td = (int(x) for x in parts[2].split("/"))
            held = None if parts[3] == "-" else int(parts[3])
        except ValueError:
            raise bad from None
        modes = {"rw": "rw", "ro": "read_only", "out_of_data_space": "out_of_data_space"}
        if (parts[4] not in modes or parts[5] not in ("no_discard_passdown", "discard_passdown", "ignore_discard")
                or parts[6] not in ("error_if_no_space", "queue_if_no_space") or parts[7] not in ("needs_check", "-")):
            raise bad
        low = low_water_mark is not None and td - ud <= low_water_mark
        return cls(tid, um, tm, ud, td, held, modes[parts[4]], parts[7] == "needs_check",
                   parts[6] == "error_if_no_space", low, False)

    def __str__(self) -> str:
        held = "-" if self.held_root is None else str(self.held_root)
        mode = {"read_only": "ro"}.get(self.mode, self.mode)
        eins = "error_if_no_space" if self.error_if_no_space else "queue_if_no_space"
        return (f"{self.transaction_id} {self.used_metadata_blocks}/{self.total_metadata_blocks} "
                f"{self.used_data_blocks}/{self.total_data_blocks} {held} {mode} no_discard_passdown "
                f"{eins} {'needs_check' if self.needs_check else '-'}")
