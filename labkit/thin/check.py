"""``thin_check`` for labkit pools: walk every tree, recount every reference, compare with the space maps.

The expected count of a metadata block is the number of pointers to it (superblock -> device tree and
space-map index/chunks, internal node -> child, device tree value -> mapping root). The expected count
of a data block is the number of *distinct leaf nodes' entries* naming it: a leaf shared by a device and
its snapshots holds one reference, exactly as in the kernel's space map.

>>> import tempfile, os
>>> from labkit.thin import Pool
>>> with Pool.create(os.path.join(tempfile.mkdtemp(), "p"), data_size="1M") as p:
...     p.create_thin(1, "1M"); p.device(1).write(0, b"x" * 70000); r = p.check()
>>> r.ok, r.problems, r.nr_mappings
(True, [], 2)
"""
from __future__ import annotations

from array import array
from collections.abc import Mapping

from .._sys.record import Record, field
from .btree import items
from .metadata import KIND_DEVICES, KIND_MAPPING, MetadataError, Superblock, TransactionManager
from .records import DeviceDetails

__all__ = ["CheckReport", "check_metadata"]

MAX_PROBLEMS = 200


class CheckReport(Record, frozen=False):
    """What :meth:`Pool.check` found. ``ok`` is True when ``problems`` is empty; ``notes`` say what was
    not (or could not be) checked, e.g. for the kernel's pool (``dmthin``).

    >>> print(CheckReport(notes=["only the status line was read"]).ok)
    True
    """

    ok: bool = True
    problems: list[str] = field(default_factory=list)
    transaction_id: int = 0
    nr_devices: int = 0
    nr_nodes: int = 0
    nr_mappings: int = 0
    free_metadata_blocks: int = 0
    notes: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.ok = False
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def __str__(self) -> str:
        lines = [f"TRANSACTION_ID={self.transaction_id}", f"METADATA_FREE_BLOCKS={self.free_metadata_blocks}",
                 "examining superblock", "examining devices tree", "examining mapping tree",
                 "checking space map counts"]
        lines += [f"  {p}" for p in self.problems]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def check_metadata(tm: TransactionManager, sb: Superblock, devices: Mapping[int, DeviceDetails]) -> CheckReport:
    """Check the metadata reachable from ``sb`` (its device tree must already hold ``devices``, the
    pool's own view of its devices) against the space maps of ``tm``: the pool's current state,
    committed plus the open transaction. :meth:`labkit.thin.Pool.check` is the way in."""
    msm, dsm = tm.meta_sm, tm.data_sm
    rep = CheckReport(transaction_id=sb.transaction_id, free_metadata_blocks=msm.nr_free)
    exp_meta = array("I", bytes(4 * msm.nr_blocks))
    exp_data = array("I", bytes(4 * dsm.nr_blocks))

    def ref_meta(b: int, what: str) -> bool:
        if not 0 <= b < msm.nr_blocks:
            rep.problem(f"{what} points to metadata block {b} beyond the metadata device")
            return False
        exp_meta[b] += 1
        return True

    ref_meta(0, "pool")
    for name, sm in (("metadata", msm), ("data", dsm)):
        for b in sm.index_locs:
            ref_meta(b, f"{name} space map index")
        for b in sm.chunk_locs:
            if b:
                ref_meta(b, f"{name} space map")
        if sm.nr_free != sm.counts.count(0):
            rep.problem(f"{name} space map: free counter {sm.nr_free} but {sm.counts.count(0)} blocks are free")

    entries: dict[int, tuple[int, int]] = {}  # node -> (leaf entries beneath, height); each node once

    def visit(b: int, kind: int, what: str, lo: int, hi: int | None) -> tuple[int, int] | None:
        """Count the reference to ``b``; check its subtree the first time; return (entries, height)."""
        if not ref_meta(b, what):
            return None
        if b in entries:
            return entries[b]
        try:
            node = tm.read(b)
        except MetadataError as e:
            rep.problem(str(e))
            return None
        rep.nr_nodes += 1
        keys = node.keys
        if node.kind != kind:
            rep.problem(f"{what}: node {b} has kind {node.kind}, expected {kind}")
        if len(keys) != len(node.values):
            rep.problem(f"{what}: node {b} has {len(keys)} keys but {len(node.values)} values")
        if any(keys[i] >= keys[i + 1] for i in range(len(keys) - 1)):
            rep.problem(f"{what}: keys of node {b} are not in order")
        if keys and (keys[0] < lo or (hi is not None and keys[-1] >= hi)):
            rep.problem(f"{what}: keys of node {b} lie outside their parent's range [{lo}, {hi})")
        total, height = 0, 0
        if node.leaf:
            total = len(keys)
            if kind == KIND_MAPPING:
                for v in node.values:
                    db = v >> 24
                    if db >= dsm.nr_blocks:
                        rep.problem(f"{what}: maps to data block {db} beyond the data device")
                    else:
                        exp_data[db] += 1
            else:
                for k, v in zip(keys, node.values):
                    rep.nr_devices += 1
                    r = visit(v[0], KIND_MAPPING, f"mapping tree of device {k}", 0, None)
                    if r is not None and r[0] != v[1]:
                        rep.problem(f"device {k}: details say {v[1]} mapped blocks, its tree holds {r[0]}")
        else:
            if not keys:
                rep.problem(f"{what}: internal node {b} is empty")
            heights = set()
            for i, c in enumerate(node.values):
                r = visit(c, kind, what, keys[i], keys[i + 1] if i + 1 < len(keys) else hi)
                if r is not None:
                    total += r[0]
                    heights.add(r[1])
            if len(heights) > 1:
                rep.problem(f"{what}: leaves under node {b} lie at different depths")
            height = 1 + max(heights, default=0)
        entries[b] = (total, height)
        return entries[b]

    visit(sb.device_root, KIND_DEVICES, "device tree", 0, None)
    if rep.nr_devices != len(devices):
        rep.problem(f"device tree holds {rep.nr_devices} devices, the pool knows {len(devices)}")
    for dev_id, d in devices.items():
        r = entries.get(d.root)
        if r is not None:
            rep.nr_mappings += r[0]
            last = -(-d.virtual_size // sb.data_block_size)
            hi = None
            for k, _v in items(tm, d.root, last):
                hi = k
                break
            if hi is not None:
                rep.problem(f"device {dev_id}: maps virtual block {hi} beyond its size")

    for name, sm, exp in (("metadata", msm, exp_meta), ("data", dsm, exp_data)):
        if exp == sm.counts:
            continue
        for b in range(sm.nr_blocks):
            have, want = sm.counts[b], exp[b]
            if have == want:
                continue
            if want == 0:
                rep.problem(f"{name} block {b}: leaked (space map count {have}, no references)")
            elif have == 0:
                rep.problem(f"{name} block {b}: in use ({want} references) but marked free")
            elif have > want:
                rep.problem(f"{name} block {b}: over-referenced (space map count {have}, {want} references)")
            else:
                rep.problem(f"{name} block {b}: under-referenced (space map count {have}, {want} references)")
    return rep
