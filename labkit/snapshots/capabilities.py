"""Optional abilities a backend may have beyond the contract, tested for with ``isinstance``.

containerd keeps optional snapshotter features as small separate interfaces (``Cleaner``, ``Usage`` of
the whole store, ...) and callers ask whether a snapshotter implements one; they never test a backend's
name. labkit does the same. Every backend has the two base abilities, with defaults in
:class:`~labkit.snapshots.base.BaseSnapshotter`:

* ``store_space() -> StoreSpace``: bytes the whole store occupies now (pool blocks for a thin pool,
  filesystem blocks of a loop-file filesystem, allocated bytes of the snapshot directories otherwise);
* ``options_for(largest_image_bytes) -> dict`` (a classmethod): the store options an experiment needs
  to hold images of that size (a loop-file size, a pool and base device size), ``{}`` when none.

The optional ones:

* :class:`PoolBacked` (``thin``, ``dmthin``): ``pool_status()`` (a :class:`labkit.thin.Status`, the
  dm-thin status line as data) and ``pool_check()`` (a :class:`labkit.thin.CheckReport`);
* :class:`BlockMapped` (``thin``): ``block_map(key)``: per virtual block of the snapshot's device, the
  data block and which other snapshots share it — what the BlockMap widget draws;
* :class:`Prestarting` (``thin``), of the backend's class: ``prestart(root)`` begins, in the background,
  what opening a store at ``root`` waits for (the pool's daemon), so that a short-lived process (the CLI)
  overlaps it with its own start; ``drop_prestart(root)`` ends one that no open took over.

:class:`StoreSpace` and :class:`SnapshotBlock` are named tuples (every `labkit run` imports this module, and a
dataclass costs ~1 ms to create).

>>> from labkit.snapshots.capabilities import PoolBacked, BlockMapped
>>> class NoPool: pass
>>> isinstance(NoPool(), PoolBacked), isinstance(NoPool(), BlockMapped)
(False, False)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:  # the pool's records; the thin layer sits below this one
    from ..thin import CheckReport, Status

__all__ = ["StoreSpace", "SnapshotBlock", "PoolBacked", "BlockMapped", "Prestarting"]


class StoreSpace(NamedTuple):
    """What a whole store occupies now: ``used_bytes`` of ``capacity_bytes`` (None: bounded only by the
    host filesystem), and ``counted`` says what was counted, in words."""

    used_bytes: int
    capacity_bytes: int | None
    counted: str


class SnapshotBlock(NamedTuple):
    """One virtual block of a snapshot's device: where its data lives and who else maps that data.

    ``data`` is None for an unmapped block (reads as zeros, costs nothing); ``shared_with`` names the
    other snapshots whose devices map the same data block, oldest first (empty: exclusive).
    """

    virtual: int
    data: int | None
    shared_with: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        """``unmapped``, ``exclusive`` or ``shared``."""
        return "unmapped" if self.data is None else "shared" if self.shared_with else "exclusive"


@runtime_checkable
class PoolBacked(Protocol):
    """A backend whose snapshots are thin devices of one pool (``thin``, ``dmthin``)."""

    def pool_status(self) -> Status:
        """The pool's status (``str()`` of it is the dm-thin status line; ``.explain()`` says it in words)."""
        ...

    def pool_check(self) -> CheckReport:
        """A consistency check of the pool's metadata (``ok`` and ``problems``)."""
        ...


@runtime_checkable
class BlockMapped(Protocol):
    """A backend that can say, block by block, what a snapshot's device maps and shares (``thin``)."""

    #: bytes per block of :meth:`block_map`
    block_bytes: int

    def block_map(self, key: str) -> list[SnapshotBlock]:
        """One :class:`SnapshotBlock` per virtual block of ``key``'s device, up to its last mapped block."""
        ...


@runtime_checkable
class Prestarting(Protocol):
    """A backend class whose stores wait for something to start when they open (``thin``: the pool's
    daemon, ~45 ms). Ask the class: ``isinstance(backend_class(name), Prestarting)``.

    ``prestart(root)`` begins it and returns at once (False when there is nothing to begin: no store yet,
    already running, another process starting it); the next open of the store in this process takes it
    over. ``drop_prestart(root)`` ends one that no open took over (the command failed before it opened
    the store), so nothing outlives the command that began it.
    """

    def prestart(self, root: str) -> bool:
        ...

    def drop_prestart(self, root: str) -> None:
        ...
