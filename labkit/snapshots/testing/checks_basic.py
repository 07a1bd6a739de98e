"""Conformance checks of the lifecycle and the metadata: prepare, commit, stat, update, walk, remove
(containerd's ``checkBasic``, ``checkStat*``, ``checkUpdate``, ``checkWalk``, ``checkRemove*``).
"""
from __future__ import annotations

import os
import pathlib
import time

from ... import errors
from ..base import Kind, Mount, Snapshotter
from .helpers import _flat, _names, _raises, _register, assert_same_tree, commit_layer, mounted
from .ops import apply, create_dir, create_file, remove_all


@_register
def check_basic(sn: Snapshotter, work: pathlib.Path) -> None:
    """prepare, write, commit; a child shows the parent, changes it, commits; a view shows both layers;
    a parent with children cannot be removed; children first, then it can."""
    initial = [create_file("/foo", b"foo\n", 0o777), create_dir("/a", 0o755), create_dir("/a/b", 0o755),
               create_dir("/a/b/c", 0o755)]
    diff = [create_file("/bar", b"bar\n", 0o777), create_file("/foo", b"bar\n", 0o777), remove_all("/a/b")]
    flat = _flat(work)

    m = sn.prepare("preparing")
    assert isinstance(m, Mount), f"prepare returned {m!r}, not a Mount"
    assert not m.readonly, f"prepare returned a read-only mount {m!r}"
    with mounted(m, work) as root:
        apply(root, *initial)
    sn.commit("committed", "preparing")
    si = sn.stat("committed")
    assert si.name == "committed" and si.kind is Kind.COMMITTED and si.parent is None, si
    with _raises(errors.NotFound, "stat of the key after commit"):
        sn.stat("preparing")

    apply(flat, *initial)
    with mounted(sn.prepare("next", "committed"), work) as root:
        assert_same_tree(flat, root, "a child right after prepare")
        apply(root, *diff)
    ni = sn.stat("next")
    assert ni.kind is Kind.ACTIVE and ni.parent == "committed", ni
    sn.commit("committed-next", "next")
    si2 = sn.stat("committed-next")
    assert si2.kind is Kind.COMMITTED and si2.parent == "committed", si2
    with _raises(errors.NotFound, "stat of the key after commit"):
        sn.stat("next")

    walked = {i.name: i for i in sn.walk()}
    assert walked == {"committed": si, "committed-next": si2}, f"walk gave {walked}"

    apply(flat, *diff)
    v = sn.view("nextnext", "committed-next")
    assert v.readonly, f"view returned a writable mount {v!r}"
    with mounted(v, work) as root:
        assert_same_tree(flat, root, "a view of the second layer")
    sn.remove("nextnext")
    with _raises(errors.FailedPrecondition, "remove of a parent that has a child"):
        sn.remove("committed")
    sn.remove("committed-next")
    sn.remove("committed")
    assert list(sn.walk()) == [], f"snapshots left after removing all: {_names(sn.walk())}"


@_register
def check_stat_active(sn: Snapshotter, work: pathlib.Path) -> None:
    """stat of an active snapshot: its key, kind active, no parent (or its parent), labels, times."""
    t0 = time.time()
    with mounted(sn.prepare("preparing", labels={"role": "scratch"}), work) as root:
        (root / "foo").write_bytes(b"foo\n")
    t1 = time.time()
    si = sn.stat("preparing")
    assert (si.name, si.kind, si.parent, si.labels) == ("preparing", Kind.ACTIVE, None, {"role": "scratch"}), si
    assert t0 - 1 <= si.created <= t1 + 1, f"created {si.created} not between {t0} and {t1}"
    assert si.created <= si.updated <= t1 + 1, f"updated {si.updated} before created {si.created} or in the future"
    commit_layer(sn, work, "base")
    sn.prepare("child", "base")
    ci = sn.stat("child")
    assert (ci.kind, ci.parent) == (Kind.ACTIVE, "base"), ci


@_register
def check_stat_committed(sn: Snapshotter, work: pathlib.Path) -> None:
    """stat of a committed snapshot: its name, kind committed, no parent, commit labels, created kept."""
    with mounted(sn.prepare("preparing"), work) as root:
        (root / "foo").write_bytes(b"foo\n")
    created = sn.stat("preparing").created
    t0 = time.time()
    sn.commit("committed", "preparing", labels={"image": "foo"})
    si = sn.stat("committed")
    assert (si.name, si.kind, si.parent) == ("committed", Kind.COMMITTED, None), si
    assert si.labels.get("image") == "foo", f"commit labels lost: {si.labels}"
    assert si.created == created, f"commit changed created: {created} -> {si.created}"
    assert si.updated >= t0 - 1, f"commit did not set updated: {si.updated} < {t0}"


@_register
def check_transitivity(sn: Snapshotter, work: pathlib.Path) -> None:
    """A <- B <- C: B's parent is A, A has none, and C sees B's version of a file A wrote."""
    commit_layer(sn, work, "snapA", [create_file("/foo", b"foo\n")])
    commit_layer(sn, work, "snapB", [create_file("/foo", b"foo bar\n")], "snapA")
    si_a, si_b = sn.stat("snapA"), sn.stat("snapB")
    assert si_a.parent is None and si_b.parent == "snapA", (si_a, si_b)
    assert sn.stat(si_b.parent).parent is None
    with mounted(sn.prepare("snapC", "snapB"), work) as root:
        assert (root / "foo").read_bytes() == b"foo bar\n", "the grandchild does not see the parent's override"
    assert sn.stat("snapC").parent == "snapB"


@_register
def check_update(sn: Snapshotter, work: pathlib.Path) -> None:
    """update replaces the labels of every kind and bumps updated; name, kind, parent and created stay."""
    commit_layer(sn, work, "c1")
    commit_layer(sn, work, "c2", parent="c1")
    sn.prepare("a1", "c2")
    sn.prepare("a2")
    sn.view("v1", "c2")
    sn.view("v2")
    for key in ("c1", "c2", "a1", "a2", "v1", "v2"):
        st = sn.stat(key)
        time.sleep(0.002)
        t0 = time.time()
        new = sn.update(key, labels={"l1": "v1", "l2": "v2"})
        assert new.labels == {"l1": "v1", "l2": "v2"}, f"{key}: update returned labels {new.labels}"
        assert sn.stat(key) == new, f"{key}: stat after update {sn.stat(key)} != returned {new}"
        assert (new.name, new.kind, new.parent, new.created) == (st.name, st.kind, st.parent, st.created), \
            f"{key}: update changed more than labels: {st} -> {new}"
        assert new.updated >= t0 - 0.001 and new.updated > st.updated, \
            f"{key}: updated not bumped: {st.updated} -> {new.updated}"
        assert sn.update(key, labels={"l1": "updated"}).labels == {"l1": "updated"}, f"{key}: labels not replaced"
        assert sn.update(key, labels={}).labels == {}, f"{key}: labels not cleared"
    with _raises(errors.NotFound, "update of an unknown key"):
        sn.update("nope", labels={"a": "b"})


@_register
def check_remove(sn: Snapshotter, work: pathlib.Path) -> None:
    """Removing an active, a view and a committed snapshot frees the key; a new snapshot under that key is
    a fresh one (the old content is gone)."""
    commit_layer(sn, work, "committed-1", [create_file("/base", b"base")])
    with mounted(sn.prepare("reuse-1", "committed-1"), work) as root:
        (root / "old").write_bytes(b"old")
    sn.remove("reuse-1")
    with _raises(errors.NotFound, "stat after remove"):
        sn.stat("reuse-1")
    with mounted(sn.view("reuse-1", "committed-1"), work) as root:
        assert sorted(os.listdir(root)) == ["base"], f"a view under a reused key shows {os.listdir(root)}"
    sn.remove("reuse-1")
    with mounted(sn.prepare("reuse-1"), work) as root:
        assert os.listdir(root) == [], f"an empty snapshot under a reused key shows {os.listdir(root)}"
        (root / "new").write_bytes(b"new")
    sn.remove("committed-1")
    sn.commit("committed-1", "reuse-1")
    with mounted(sn.view("v", "committed-1"), work) as root:
        assert sorted(os.listdir(root)) == ["new"], f"a committed snapshot under a reused name shows {os.listdir(root)}"
    sn.remove("v")
    with _raises(errors.NotFound, "remove of an unknown key"):
        sn.remove("nope")


@_register
def check_remove_intermediate(sn: Snapshotter, work: pathlib.Path) -> None:
    """base <- inter <- top: removing inter or base is FailedPrecondition (a view counts as a child too);
    removing top-down works, and each removed snapshot is gone."""
    commit_layer(sn, work, "base", [create_file("/f", b"base")])
    commit_layer(sn, work, "inter", [create_file("/g", b"inter")], "base")
    sn.prepare("top", "inter")
    sn.view("look", "base")
    for name in ("inter", "base"):
        with _raises(errors.FailedPrecondition, f"remove({name!r}) while it has children"):
            sn.remove(name)
    assert _names(sn.walk()) == ["base", "inter", "top", "look"], f"a refused remove changed walk: {_names(sn.walk())}"
    sn.remove("top")
    sn.remove("inter")
    with _raises(errors.FailedPrecondition, "remove('base') while a view of it exists"):
        sn.remove("base")
    with mounted(sn.mounts("look"), work) as root:
        assert (root / "f").read_bytes() == b"base", "the view of base lost its content"
    sn.remove("look")
    sn.remove("base")
    assert list(sn.walk()) == []
    for name in ("top", "inter", "base", "look"):
        with _raises(errors.NotFound, f"stat({name!r}) after remove"):
            sn.stat(name)


@_register
def check_walk(sn: Snapshotter, work: pathlib.Path) -> None:
    """walk lists every snapshot oldest first; filters: field==/!= value, comma = AND, several = OR."""
    suite = {"suite": "walk"}
    sn.prepare("a-np", labels=suite)
    sn.prepare("p-tmp", labels=suite)
    sn.commit("p", "p-tmp", labels=suite)
    sn.prepare("a", "p", labels=suite)
    sn.view("v", "p", labels=suite)
    sn.prepare("p-wl-tmp", labels=suite)
    sn.commit("p-wl", "p-wl-tmp", labels={**suite, "l": "1"})
    sn.prepare("a-wl", "p-wl", labels={**suite, "l": "2"})
    sn.view("v-wl", "p-wl", labels={**suite, "l": "3"})
    sn.prepare("a-np-wl", labels={**suite, "l": "2"})
    everything = ["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"]
    infos = list(sn.walk())
    assert _names(infos) == everything, f"walk() gave {_names(infos)}, expected oldest first {everything}"
    assert [i.created for i in infos] == sorted(i.created for i in infos), "walk() is not oldest first"
    cases = [
        (("labels.suite==walk",), everything),
        (("kind==active,labels.suite==walk",), ["a-np", "a", "a-wl", "a-np-wl"]),
        (("kind==view",), ["v", "v-wl"]),
        (("kind==committed",), ["p", "p-wl"]),
        (("name==p", "name==a-np-wl"), ["p", "a-np-wl"]),
        (("name==a-wl,labels.l==2",), ["a-wl"]),
        (("parent==p",), ["a", "v"]),
        (("parent==p", "labels.l==3"), ["a", "v", "v-wl"]),
        (("labels.l==2",), ["a-wl", "a-np-wl"]),
        (("kind==committed,name!=p",), ["p-wl"]),
        (("kind == view , parent == p-wl",), ["v-wl"]),
        (("kind==active,parent==p-wl", "kind==view,parent==p"), ["v", "a-wl"]),
        (("name==nothing",), []),
    ]
    for filters, expected in cases:
        got = _names(sn.walk(*filters))
        assert got == expected, f"walk{filters} gave {got}, expected {expected}"
    for bad in ("kind", "colour==red"):
        with _raises(errors.InvalidArgument, f"walk({bad!r})"):
            list(sn.walk(bad))


@_register
def check_stat_in_walk(sn: Snapshotter, work: pathlib.Path) -> None:
    """stat (and a removal) while a walk is being iterated: no deadlock, the same Info."""
    commit_layer(sn, work, "c1")
    commit_layer(sn, work, "c2", parent="c1")
    sn.prepare("a1", "c2", labels={"x": "y"})
    sn.view("v1", "c2")
    sn.prepare("gone")
    seen = []
    for info in sn.walk():
        if info.name == "gone":      # removed during the walk: listing it or not are both fine
            continue
        assert sn.stat(info.name) == info, f"stat({info.name!r}) = {sn.stat(info.name)} but walk gave {info}"
        seen.append(info.name)
        if info.name == "c1":
            sn.remove("gone")
    assert set(seen) >= {"c1", "c2", "a1", "v1"}, seen
