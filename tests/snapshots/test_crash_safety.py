"""A process that dies in the middle of prepare/view/remove leaves nothing a later open cannot settle.

The crashing process is a real second process (``_child.py``) that ``os._exit``\\s right after the backend
made (or released) the storage and before the row was settled: no ``finally``, no ``close``. The next open
of the store rolls the half-made snapshot back (or finishes the removal), and the key works again. An
operation of a process that is still alive is never "recovered" by another.
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from labkit import errors
from labkit.snapshots import Kind, backend_status, open_snapshotter
from labkit.snapshots.testing import commit_layer, create_file, mounted

CHILD = os.path.join(os.path.dirname(__file__), "_child.py")
_STATUS = {s.name: s for s in backend_status("/tmp")}
BACKENDS = [b for b in ("copy", "overlay", "btrfs", "reflink", "thin") if _STATUS[b].available]

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts")]


def _child(backend: str, root, mode: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, CHILD, backend, str(root), mode, *args], text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), **popen)


def _crash(backend: str, root, mode: str, *args: str) -> None:
    p = _child(backend, root, mode, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 17, f"the child did not crash where planned (exit {p.returncode}): {err[-2000:]}"


def _store(tmp_path, backend):
    root, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    with open_snapshotter(backend, root) as sn:
        commit_layer(sn, work, "base", [create_file("/f", b"base")])
        base_id = os.listdir(sn.storage)
    return root, work, base_id


def _settled(sn, base_id) -> None:
    """Nothing is left of the crashed operation: the storage directory holds only base's, no lock is left."""
    assert sorted(os.listdir(sn.storage)) == base_id, f"storage left behind: {os.listdir(sn.storage)}"
    assert os.listdir(os.path.join(sn.root, "locks")) == [], "a lock file was left behind"


@pytest.mark.parametrize("mode,operation", [("crash-create", "prepare"), ("crash-view", "view")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_crash_after_storage_was_made(backend, mode, operation, tmp_path):
    root, work, base_id = _store(tmp_path, backend)
    _crash(backend, root, mode, "c1", "base")
    with open_snapshotter(backend, root) as sn:
        assert [(r.name, r.operation, r.outcome) for r in sn.recovered] == [("c1", operation, "rolled back")], \
            sn.recovered
        assert [i.name for i in sn.walk()] == ["base"]
        _settled(sn, base_id)
        with mounted(sn.prepare("c1", "base"), work) as r:       # the same key, and a fresh snapshot
            assert os.listdir(r) == ["f"] and (r / "f").read_bytes() == b"base"
            (r / "g").write_bytes(b"mine")
        sn.commit("c1-img", "c1")
        assert sn.stat("c1-img").parent == "base"
        sn.remove("c1-img")
        sn.remove("base")                 # no pending child holds the parent any more
        assert sn.recover() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_crash_during_remove_is_finished(backend, tmp_path):
    root, work, base_id = _store(tmp_path, backend)
    with open_snapshotter(backend, root) as sn:
        with mounted(sn.prepare("c1", "base"), work) as r:
            (r / "old").write_bytes(b"old")
    _crash(backend, root, "crash-remove", "c1")
    with open_snapshotter(backend, root) as sn:
        assert [(r.name, r.operation, r.outcome) for r in sn.recovered] == [("c1", "remove", "finished")]
        assert [i.name for i in sn.walk()] == ["base"]
        _settled(sn, base_id)
        with mounted(sn.prepare("c1", "base"), work) as r:
            assert os.listdir(r) == ["f"], "the removed snapshot's content came back"


@pytest.mark.parametrize("backend", BACKENDS)
def test_live_process_is_not_recovered(backend, tmp_path):
    """Another process's prepare in flight stays untouched by open/recover; its row is invisible meanwhile
    and its key taken; once it finishes, the snapshot is there."""
    root, work, _ = _store(tmp_path, backend)
    p = _child(backend, root, "hold-create", "c1", "base", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = p.stdout.readline()
        assert line, f"the child died before making its storage (exit {p.wait()})"
        row_id = json.loads(line)["id"]
        with open_snapshotter(backend, root) as sn:
            assert sn.recovered == [] and sn.recover() == []
            assert os.path.isdir(os.path.join(sn.storage, str(row_id))), "another process's storage was released"
            with pytest.raises(errors.NotFound):
                sn.stat("c1")
            assert [i.name for i in sn.walk()] == ["base"]
            with pytest.raises(errors.AlreadyExists, match="being made"):
                sn.prepare("c1")
            with pytest.raises(errors.FailedPrecondition, match="being made"):
                sn.remove("base")
            p.stdin.write("\n")
            p.stdin.flush()
            assert p.stdout.readline() == "done\n"
            assert p.wait(timeout=60) == 0
            info = sn.stat("c1")
            assert (info.kind, info.parent) == (Kind.ACTIVE, "base")
            with mounted(sn.mounts("c1"), work) as r:
                assert os.listdir(r) == ["f"]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_store_without_pending_column_opens(tmp_path):
    """A store made before the pending column existed opens unchanged (the migration only adds it)."""
    root, work = tmp_path / "store", tmp_path / "work"
    with open_snapshotter("copy", root) as sn:
        commit_layer(sn, work, "base", [create_file("/f", b"base")])
        before = list(sn.walk())
    db = sqlite3.connect(root / "metadata.db")
    db.execute("ALTER TABLE snapshots DROP COLUMN pending")
    db.close()
    with open_snapshotter("copy", root) as sn:
        assert list(sn.walk()) == before and sn.recovered == []
        with mounted(sn.prepare("c", "base"), work) as r:
            assert (r / "f").read_bytes() == b"base"
    cols = [r[1] for r in sqlite3.connect(root / "metadata.db").execute("PRAGMA table_info(snapshots)")]
    assert cols.count("pending") == 1


def test_failed_create_and_remove_leave_things_as_they_were(tmp_path, monkeypatch):
    """An exception (not a crash) in the backend: a failed prepare leaves no row, storage or lock and the key
    free; a failed remove leaves the snapshot whole and visible."""
    with open_snapshotter("copy", tmp_path / "store") as sn:
        sn.prepare("a")
        sn.commit("base", "a")
        before = sorted(os.listdir(sn.storage))

        def boom(row, chain):
            os.mkdir(os.path.join(sn.storage, str(row.id), "fs"))
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(sn, "_create", boom)
        with pytest.raises(OSError, match="No space"):
            sn.prepare("k", "base")
        monkeypatch.undo()
        assert [i.name for i in sn.walk()] == ["base"] and sorted(os.listdir(sn.storage)) == before
        assert os.listdir(os.path.join(sn.root, "locks")) == []
        sn.prepare("k", "base")

        def refuse(row):
            raise errors.FailedPrecondition("device", "is busy")
        monkeypatch.setattr(sn, "_remove", refuse)
        with pytest.raises(errors.FailedPrecondition, match="busy"):
            sn.remove("k")
        monkeypatch.undo()
        assert sn.stat("k").kind is Kind.ACTIVE and sn.recover() == []
        assert os.listdir(os.path.join(sn.root, "locks")) == []
        sn.remove("k")
        assert [i.name for i in sn.walk()] == ["base"]
