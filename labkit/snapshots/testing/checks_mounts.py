"""Conformance checks of mounts and handles: mounts() agrees with prepare/view, a mounted snapshot cannot be
removed, siblings are isolated, concurrent prepares, and a reopened store keeps everything.
"""
from __future__ import annotations

import errno
import os
import pathlib
import threading

from ... import errors
from .. import open_snapshotter
from ..base import Snapshotter
from .helpers import (
    _assert_nothing_behind,
    _errno,
    _flat,
    _names,
    _raises,
    _register,
    _store_state,
    assert_view,
    commit_layer,
    mounted,
)
from .ops import create_file


@_register
def check_mounts(sn: Snapshotter, work: pathlib.Path) -> None:
    """mounts() gives the same Mount that prepare/view gave, showing the same content (writes through one
    are seen through the other); a committed snapshot has no mount (FailedPrecondition)."""
    commit_layer(sn, work, "base", [create_file("/f", b"base")])
    m = sn.prepare("active", "base")
    assert sn.mounts("active") == m, f"mounts('active') = {sn.mounts('active')!r}, prepare gave {m!r}"
    with mounted(m, work) as root:
        (root / "written").write_bytes(b"through prepare's mount")
    with mounted(sn.mounts("active"), work) as root:
        assert (root / "written").read_bytes() == b"through prepare's mount", "mounts() shows other content"
        assert (root / "f").read_bytes() == b"base"
        (root / "again").write_bytes(b"through mounts()")
    with mounted(m, work) as root:
        assert (root / "again").read_bytes() == b"through mounts()", "prepare's mount misses a write through mounts()"
    v = sn.view("look", "base")
    assert sn.mounts("look") == v, f"mounts('look') = {sn.mounts('look')!r}, view gave {v!r}"
    with _raises(errors.FailedPrecondition, "mounts() of a committed snapshot"):
        sn.mounts("base")
    sn.commit("active-c", "active")
    with _raises(errors.FailedPrecondition, "mounts() of a snapshot after its commit"):
        sn.mounts("active-c")


@_register
def check_remove_mounted_refused(sn: Snapshotter, work: pathlib.Path) -> None:
    """Removing an active snapshot while it is mounted (a running container's root) is refused
    (FailedPrecondition naming where) and leaves it whole; once unmounted it can be removed. A view of
    the same parent mounted elsewhere does not block removing another, unmounted view."""
    commit_layer(sn, work, "img-rm", [create_file("/keep", b"keep")])
    with mounted(sn.prepare("busy", "img-rm"), work) as root:
        with _raises(errors.FailedPrecondition, "remove of a mounted snapshot"):
            sn.remove("busy")
        assert (root / "keep").read_bytes() == b"keep", "a refused remove damaged the mounted tree"
        assert sn.stat("busy").name == "busy"
    sn.remove("busy")
    sn.view("idle-view", "img-rm")
    with mounted(sn.view("shown-view", "img-rm"), work):
        sn.remove("idle-view")
    sn.remove("shown-view")
    sn.remove("img-rm")


@_register
def check_empty(sn: Snapshotter, work: pathlib.Path) -> None:
    """An active snapshot or a view without a parent is empty (nothing at all in its root, not even
    lost+found); the view is read-only; an empty layer commits and its view is empty too."""
    with mounted(sn.prepare("empty"), work) as root:
        assert os.listdir(root) == [], f"a new snapshot without parent contains {os.listdir(root)}"
    v = sn.view("empty-view")
    assert v.readonly, f"a view without parent is not read-only: {v!r}"
    with mounted(v, work) as root:
        assert os.listdir(root) == [], f"a view without parent contains {os.listdir(root)}"
        _errno(errno.EROFS, "write into an empty view", lambda: (root / "x").write_bytes(b"x"))
    sn.commit("empty-c", "empty")
    flat = _flat(work)
    assert_view(sn, work, "empty-c", flat, "a view of an empty committed layer")


@_register
def check_siblings_isolated(sn: Snapshotter, work: pathlib.Path) -> None:
    """Two active children of one parent, mounted at once, do not see each other's writes or deletions."""
    commit_layer(sn, work, "base", [create_file("/a", b"base a"), create_file("/b", b"base b")])
    with mounted(sn.prepare("s1", "base"), work) as r1, mounted(sn.prepare("s2", "base"), work) as r2, \
            mounted(sn.view("look", "base"), work) as rv:
        (r1 / "x").write_bytes(b"s1")
        with open(r1 / "a", "r+b") as f:
            f.write(b"S1")
        os.unlink(r1 / "b")
        (r2 / "y").write_bytes(b"s2")
        assert sorted(os.listdir(r2)) == ["a", "b", "y"], f"s2 sees {sorted(os.listdir(r2))}"
        assert (r2 / "a").read_bytes() == b"base a", "s1's write is visible in s2"
        assert sorted(os.listdir(r1)) == ["a", "x"], f"s1 sees {sorted(os.listdir(r1))}"
        assert sorted(os.listdir(rv)) == ["a", "b"] and (rv / "a").read_bytes() == b"base a", \
            "a view of the parent sees a child's writes"


@_register
def check_concurrent_prepares(sn: Snapshotter, work: pathlib.Path) -> None:
    """8 threads prepare, mount, write and commit children of one parent at once: all succeed and each child
    holds exactly the parent plus its own file. 8 threads preparing one key: exactly one wins, the others
    get AlreadyExists, and nothing is left behind."""
    commit_layer(sn, work, "base", [create_file("/base", b"base")])
    n = 8
    barrier = threading.Barrier(n)
    failures: list[str] = []

    def child(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            m = sn.prepare(f"c{i}", "base")
            with mounted(m, work, f"c{i}") as root:
                (root / f"own-{i}").write_bytes(str(i).encode())
            sn.commit(f"img{i}", f"c{i}")
        except BaseException as e:  # noqa: BLE001 - collected and reported below
            failures.append(f"thread {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=child, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, "concurrent prepares failed:\n" + "\n".join(failures)
    for i in range(n):
        with mounted(sn.view(f"v{i}", f"img{i}"), work) as root:
            assert sorted(os.listdir(root)) == ["base", f"own-{i}"], f"img{i} shows {sorted(os.listdir(root))}"
        sn.remove(f"v{i}")

    before = list(sn.walk())
    store = _store_state(sn)
    results: list[str] = []
    barrier = threading.Barrier(n)

    def same(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            sn.prepare("same", "base")
            results.append("ok")
        except errors.AlreadyExists:
            results.append("exists")
        except BaseException as e:  # noqa: BLE001
            results.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=same, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["exists"] * (n - 1) + ["ok"], f"racing prepares of one key gave {sorted(results)}"
    assert _names(sn.walk("name==same")) == ["same"]
    sn.remove("same")
    _assert_nothing_behind(sn, before, store, "racing prepares of one key, then its removal")


@_register
def check_reopen(sn: Snapshotter, work: pathlib.Path) -> None:
    """Closing the snapshotter and opening a new one on the same root keeps every snapshot: the same walk,
    an active snapshot's content (through mounts()), committed content, and it can still be committed."""
    root = getattr(sn, "root", None)
    assert root, f"{sn!r} has no root attribute to reopen"
    commit_layer(sn, work, "base", [create_file("/f", b"base")], labels={"keep": "me"})
    with mounted(sn.prepare("work", "base"), work) as r:
        (r / "g").write_bytes(b"work")
    sn.view("look", "base")
    infos = list(sn.walk())
    sn.close()
    sn2 = open_snapshotter(sn.name, root)
    try:
        assert list(sn2.walk()) == infos, f"after reopening, walk gave {list(sn2.walk())}, before {infos}"
        with mounted(sn2.mounts("work"), work) as r:
            assert sorted(os.listdir(r)) == ["f", "g"] and (r / "g").read_bytes() == b"work", \
                "the active snapshot's content is lost after reopening"
        with mounted(sn2.mounts("look"), work) as r:
            assert sorted(os.listdir(r)) == ["f"], "the view's content changed after reopening"
        sn2.commit("work-c", "work")
        assert sn2.stat("work-c").parent == "base"
    finally:
        sn2.close()
