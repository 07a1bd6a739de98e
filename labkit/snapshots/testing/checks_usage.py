"""Conformance check of usage: a snapshot's exclusive bytes and inodes count its own layer only.
"""
from __future__ import annotations

import os
import pathlib

from ..base import Snapshotter
from .helpers import _register, mounted
from .ops import MiB


def _close_enough(a: int, b: int, slack: int) -> bool:
    return abs(a - b) <= slack


def _free_bytes(path: str | os.PathLike[str]) -> int:
    os.sync()
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def _prepare_cost(sn: Snapshotter, work: pathlib.Path, parent: str, enough: int, tries: int = 3) -> int:
    """Free space (of the filesystem holding ``parent``, seen through a view) that preparing a child of
    it takes; the largest of a few tries, since other processes may free space meanwhile."""
    best = 0
    with mounted(sn.view("cost-look", parent), work) as look:
        for i in range(tries):
            before = _free_bytes(look)
            sn.prepare(f"cost-probe-{i}", parent)
            best = max(best, before - _free_bytes(look))
            sn.remove(f"cost-probe-{i}")
            if best >= enough:
                break
    sn.remove("cost-look")
    return best


@_register
def check_usage(sn: Snapshotter, work: pathlib.Path) -> None:
    """usage counts the snapshot's own layer: a 16 MiB committed layer counts ~16 MiB; writing 4 MiB in its
    child grows the child by ~4 MiB and never the parent; a child that shares its parent's data counts
    only its writes (~4 MiB, well below the parent), one that copies it (the copy baseline) counts the copy
    too, because removing it would free that. A view counts ~nothing."""
    parent_files = 4
    with mounted(sn.prepare("big-active"), work) as root:
        for i in range(parent_files):
            (root / f"big-{i}").write_bytes(os.urandom(4 * MiB))
    sn.commit("big", "big-active")
    pu = sn.usage("big")
    assert pu.size >= 15 * MiB, f"a committed layer of 16 MiB reports usage {pu.size} bytes"
    assert pu.inodes >= parent_files, f"a committed layer of {parent_files} files reports {pu.inodes} inodes"

    sn.prepare("child", "big")
    u0 = sn.usage("child")
    shares = u0.size < MiB
    if not shares:
        assert _close_enough(u0.size, pu.size, max(MiB, pu.size // 10)), (
            f"a fresh child of a {pu.size}-byte parent reports {u0.size} bytes: neither ~0 (shares the parent) "
            "nor ~the parent (a full copy)")
        cost = _prepare_cost(sn, work, "big", pu.size // 2)
        assert cost >= pu.size // 2, (
            f"a fresh child reports its {pu.size}-byte parent's data as its own ({u0.size} bytes) but preparing a "
            f"child took only {cost} bytes of space: parents never count, only data the child really holds")
    n = 4 * MiB
    with mounted(sn.mounts("child"), work) as root:
        for i in range(2):
            with open(root / f"new-{i}", "wb") as f:
                f.write(os.urandom(n // 2))
                f.flush()
                os.fsync(f.fileno())
        u1 = sn.usage("child")
    u2 = sn.usage("child")
    for u, when in ((u1, "while mounted (after fsync)"), (u2, "after unmount")):
        grew = u.size - u0.size
        assert 0.9 * n <= grew <= n + 3 * MiB, f"writing {n} bytes grew the child's usage {when} by {grew} bytes"
        assert u.inodes > u0.inodes, f"writing 2 files did not add inodes {when}: {u0.inodes} -> {u.inodes}"
        if shares:
            assert u.size <= n + 3 * MiB and u.size < pu.size // 2, \
                f"a child sharing its {pu.size}-byte parent reports {u.size} bytes after writing {n}"
    after = sn.usage("big")
    assert after.size <= pu.size + MiB, f"the child's writes were counted for the parent: {pu.size} -> {after.size}"
    sn.commit("child-c", "child")
    uc = sn.usage("child-c")
    assert uc.size >= 0.9 * n, f"the committed child reports {uc.size} bytes, it wrote {n}"
    sn.view("look", "child-c")
    uv = sn.usage("look")
    assert uv.size < MiB, f"a view reports usage {uv.size} bytes"
