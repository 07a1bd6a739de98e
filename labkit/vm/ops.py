"""Random sequences of thin-pool operations, the same on every machine for a given seed.

One sequence drives both labkit's model (:class:`labkit.thin.Pool`) and the kernel's pool
(:class:`labkit.vm.kernelpool.KernelPool`): ``create_thin``, ``create_snap`` (of thin devices and of
snapshots, to any depth), writes of 4 KiB to 1 MiB (4 KiB aligned, so the kernel side can use O_DIRECT),
discards (4 KiB aligned, so partial blocks at either end are common), ``delete`` and ``commit``. The pool
is sized so that it never fills (that is a separate lesson); the last operation is always a commit.
Only the standard library, and plain JSON-able values: the sequence travels into the VM as JSON.

>>> seq = generate(seed=1, n_ops=40)
>>> seq[-1].kind, len(seq), all(isinstance(o.to_json(), dict) for o in seq)
('commit', 40, True)
>>> generate(seed=1, n_ops=40) == seq                   # deterministic
True
>>> len(payload(1, 3, 8192)), payload(1, 3, 8192) == payload(1, 3, 8192)
(8192, True)
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Op", "generate", "payload", "Plan", "plan_for", "space_ops"]

KIB = 1024
MIB = 1 << 20
PAGE = 4 * KIB
DEV_SIZES = (1 * MIB, 2 * MIB, 4 * MIB)
MAX_DEVICES = 8
KINDS = ("create_thin", "create_snap", "write", "discard", "delete", "commit")


@dataclass(frozen=True)
class Op:
    """One operation: ``kind`` with its device (``dev``), ``origin`` (create_snap), ``size``
    (create_thin: the virtual size), ``offset``/``length`` (write, discard)."""

    kind: str
    dev: int = 0
    origin: int = 0
    size: int = 0
    offset: int = 0
    length: int = 0

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v or k == "kind"}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Op:
        return cls(**d)

    def __str__(self) -> str:
        if self.kind == "create_thin":
            return f"create_thin {self.dev} ({self.size >> 10} KiB)"
        if self.kind == "create_snap":
            return f"create_snap {self.dev} of {self.origin}"
        if self.kind in ("write", "discard"):
            return f"{self.kind} dev {self.dev} [{self.offset:#x}, +{self.length:#x})"
        if self.kind == "delete":
            return f"delete {self.dev}"
        return "commit"


@dataclass(frozen=True)
class Plan:
    """Pool geometry that a sequence needs: data size (never fills), block size."""

    data_size: int
    block_size: int


def plan_for(block_size: int = 64 * KIB) -> Plan:
    """Geometry for :func:`generate`'s sequences: room for every live device fully mapped, twice.

    >>> plan_for().data_size // MIB
    64
    """
    return Plan(2 * MAX_DEVICES * max(DEV_SIZES), block_size)


def payload(seed: int, index: int, length: int) -> bytes:
    """The bytes operation ``index`` of sequence ``seed`` writes: pseudo-random, reproducible."""
    return random.Random(f"labkit-kernel-diff:{seed}:{index}").randbytes(length)


def apply(pool: Any, op: Op, index: int, seed: int, sizes: dict[int, int]) -> None:
    """Apply ``op`` (the ``index``-th of sequence ``seed``) to a :class:`labkit.thin.Pool`, keeping
    ``sizes`` (device id -> virtual size) up to date; any other kind is a commit."""
    if op.kind == "create_thin":
        pool.create_thin(op.dev, op.size)
        sizes[op.dev] = op.size
    elif op.kind == "create_snap":
        pool.create_snap(op.dev, op.origin)
        sizes[op.dev] = sizes[op.origin]
    elif op.kind == "write":
        pool.device(op.dev).write(op.offset, payload(seed, index, op.length))
    elif op.kind == "discard":
        pool.device(op.dev).discard(op.offset, op.length)
    elif op.kind == "delete":
        pool.delete(op.dev)
        sizes.pop(op.dev)
    else:
        pool.commit()


def generate(seed: int, n_ops: int) -> list[Op]:
    """``n_ops`` operations (at least 2), the last a commit. Device ids are never reused."""
    if n_ops < 2:
        raise ValueError("n_ops must be at least 2")
    rng = random.Random(f"labkit-kernel-diff-ops:{seed}")
    live: dict[int, int] = {}   # dev -> virtual size
    next_id = 1
    ops: list[Op] = []
    weights = {"create_thin": 5, "create_snap": 12, "write": 46, "discard": 12, "delete": 7, "commit": 10}
    while len(ops) < n_ops - 1:
        kinds = [k for k in KINDS if _possible(k, live)]
        kind = rng.choices(kinds, [weights[k] for k in kinds])[0]
        if kind == "create_thin":
            size = rng.choice(DEV_SIZES)
            live[next_id] = size
            ops.append(Op("create_thin", next_id, size=size))
            next_id += 1
        elif kind == "create_snap":
            origin = rng.choice(sorted(live))
            live[next_id] = live[origin]
            ops.append(Op("create_snap", next_id, origin=origin))
            next_id += 1
        elif kind == "write":
            dev = rng.choice(sorted(live))
            length = PAGE * rng.choice([1, 1, 2, 3, 4, 8, 16, 17, 32, 64, 100, 128, 256])
            length = min(length, live[dev])
            offset = PAGE * rng.randrange((live[dev] - length) // PAGE + 1)
            ops.append(Op("write", dev, offset=offset, length=length))
        elif kind == "discard":
            dev = rng.choice(sorted(live))
            length = PAGE * rng.randrange(1, live[dev] // PAGE + 1)
            offset = PAGE * rng.randrange((live[dev] - length) // PAGE + 1)
            ops.append(Op("discard", dev, offset=offset, length=length))
        elif kind == "delete":
            dev = rng.choice(sorted(live))
            del live[dev]
            ops.append(Op("delete", dev))
        else:
            ops.append(Op("commit"))
    ops.append(Op("commit"))
    return ops


def _possible(kind: str, live: dict[int, int]) -> bool:
    if kind == "create_thin":
        return len(live) < MAX_DEVICES
    if kind == "create_snap":
        return 0 < len(live) < MAX_DEVICES
    if kind == "delete":
        return len(live) > 1
    if kind in ("write", "discard"):
        return bool(live)
    return True


def space_ops(containers: int, image_bytes: int, write_bytes: int, *, chunk: int = MIB) -> list[Op]:
    """The space experiment as a sequence: device 1 (the image, 4x ``image_bytes`` virtual) gets
    ``image_bytes`` written and is committed; then each container is a snapshot of it (ids 100, 101, ...)
    that overwrites the first ``write_bytes`` and is committed (a commit point per container).

    >>> [str(o) for o in space_ops(1, 2 * MIB, MIB)][:2]
    ['create_thin 1 (8192 KiB)', 'write dev 1 [0x0, +0x100000)']
    >>> sum(o.kind == "commit" for o in space_ops(3, 2 * MIB, MIB))
    4
    """
    if image_bytes % PAGE or write_bytes % PAGE or write_bytes > image_bytes * 4:
        raise ValueError("image_bytes and write_bytes must be multiples of 4 KiB, write_bytes within the device")
    ops = [Op("create_thin", 1, size=4 * image_bytes)]
    ops += [Op("write", 1, offset=off, length=min(chunk, image_bytes - off)) for off in range(0, image_bytes, chunk)]
    ops.append(Op("commit"))
    for c in range(containers):
        ops.append(Op("create_snap", 100 + c, origin=1))
        ops += [Op("write", 100 + c, offset=off, length=min(chunk, write_bytes - off))
                for off in range(0, write_bytes, chunk)]
        ops.append(Op("commit"))
    return ops
