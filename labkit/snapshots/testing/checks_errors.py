"""Conformance checks of refusals: every refused call raises the documented error and leaves nothing behind
(no row, no storage, no mount); a view is read-only; a closed snapshotter refuses everything.
"""
from __future__ import annotations

import errno
import os
import pathlib
from collections.abc import Callable
from functools import partial

from ... import errors
from ..base import Kind, Snapshotter
from .helpers import (
    _assert_nothing_behind,
    _errno,
    _names,
    _raises,
    _register,
    _store_state,
    commit_layer,
    leftover_mounts,
    mounted,
)
from .ops import create_dir, create_file


@_register
def check_prepare_view_existing_key(sn: Snapshotter, work: pathlib.Path) -> None:
    """prepare or view with a key already taken (by an active, a view or a committed) is AlreadyExists,
    and the existing snapshot is untouched."""
    commit_layer(sn, work, "snapA", [create_file("/a", b"A")])
    with mounted(sn.prepare("newlayer", "snapA"), work) as root:
        (root / "mine").write_bytes(b"mine")
    sn.view("viewlayer", "snapA")
    before = list(sn.walk())
    store = _store_state(sn)
    for key in ("newlayer", "viewlayer", "snapA"):
        for fn in (sn.prepare, sn.view):
            with _raises(errors.AlreadyExists, f"{fn.__name__}({key!r}) when {key!r} exists"):
                fn(key, "snapA")
            with _raises(errors.AlreadyExists, f"{fn.__name__}({key!r}, None) when {key!r} exists"):
                fn(key)
    _assert_nothing_behind(sn, before, store, "a refused prepare/view")
    with mounted(sn.mounts("newlayer"), work) as root:
        assert (root / "mine").read_bytes() == b"mine", "the existing active snapshot lost its content"


@_register
def check_commit_errors(sn: Snapshotter, work: pathlib.Path) -> None:
    """commit of an unknown key is NotFound; of a view or a committed snapshot FailedPrecondition; onto a
    taken name AlreadyExists. None of them changes anything: the active snapshot commits fine afterwards."""
    commit_layer(sn, work, "base", [create_file("/f", b"base")])
    with mounted(sn.prepare("work", "base"), work) as root:
        (root / "g").write_bytes(b"work")
    sn.view("look", "base")
    sn.prepare("other")
    before = list(sn.walk())
    store = _store_state(sn)
    with _raises(errors.NotFound, "commit of an unknown key"):
        sn.commit("x", "nope")
    with _raises(errors.FailedPrecondition, "commit of a view"):
        sn.commit("x", "look")
    with _raises(errors.FailedPrecondition, "commit of a committed snapshot"):
        sn.commit("x", "base")
    for taken in ("base", "look", "other"):
        with _raises(errors.AlreadyExists, f"commit onto the taken name {taken!r}"):
            sn.commit(taken, "work")
    _assert_nothing_behind(sn, before, store, "a refused commit")
    sn.commit("done", "work")
    with mounted(sn.view("v", "done"), work) as root:
        assert sorted(os.listdir(root)) == ["f", "g"], os.listdir(root)


@_register
def check_prepare_bad_parent(sn: Snapshotter, work: pathlib.Path) -> None:
    """prepare/view with a missing parent is NotFound, with an active or view parent FailedPrecondition;
    each leaves nothing behind (no row, no storage, no mount) and the key stays free."""
    commit_layer(sn, work, "base", [create_file("/f", b"base")])
    sn.prepare("active", "base")
    sn.view("look", "base")
    before = list(sn.walk())
    store = _store_state(sn)
    for fn in (sn.prepare, sn.view):
        with _raises(errors.NotFound, f"{fn.__name__} with a missing parent"):
            fn("k", "missing")
        for bad in ("active", "look"):
            with _raises(errors.FailedPrecondition, f"{fn.__name__} with the {bad} snapshot as parent"):
                fn("k", bad)
        _assert_nothing_behind(sn, before, store, f"a refused {fn.__name__}")
    with mounted(sn.prepare("k", "base"), work) as root:
        assert os.listdir(root) == ["f"], "the key of a refused prepare is not reusable"


@_register
def check_keys(sn: Snapshotter, work: pathlib.Path) -> None:
    """Keys with slashes, spaces, unicode or 255 characters work; empty, NUL/newline or too long keys are
    InvalidArgument and leave nothing behind."""
    for key in ("work/dir one/key", "\u00fcn\u00efc\u00f8de", "k" * 255, "-dash", ".."):
        with mounted(sn.prepare(key), work) as root:
            (root / "f").write_bytes(key.encode())
        sn.commit(key + "#c" if len(key) < 250 else "c" * 255, key)
    sn.prepare("spare")
    before = list(sn.walk())
    store = _store_state(sn)
    for bad in ("", "a\nb", "a\0b", "k" * 256):
        for call in (partial(sn.prepare, bad), partial(sn.view, bad), partial(sn.commit, bad, "spare")):
            with _raises(errors.InvalidArgument, f"key {bad[:20]!r}"):
                call()
    _assert_nothing_behind(sn, before, store, "an invalid key")


@_register
def check_not_found(sn: Snapshotter, work: pathlib.Path) -> None:
    """Every call naming an unknown snapshot is NotFound."""
    commit_layer(sn, work, "base")
    calls: dict[str, Callable[[], object]] = {
        "stat": lambda: sn.stat("nope"), "update": lambda: sn.update("nope", labels={}),
        "usage": lambda: sn.usage("nope"), "mounts": lambda: sn.mounts("nope"), "remove": lambda: sn.remove("nope"),
        "commit": lambda: sn.commit("x", "nope"), "prepare": lambda: sn.prepare("x", "nope"),
        "view": lambda: sn.view("x", "nope"),
    }
    for name, call in calls.items():
        with _raises(errors.NotFound, f"{name} of an unknown snapshot"):
            call()
    assert _names(sn.walk()) == ["base"]


@_register
def check_view_readonly(sn: Snapshotter, work: pathlib.Path) -> None:
    """A view's mount is read-only (writes fail with EROFS); a view cannot be committed or be a parent."""
    commit_layer(sn, work, "committed", [create_file("/existing", b"x"), create_dir("/dir")])
    m = sn.view("view", "committed")
    assert m.readonly, f"view returned a mount that does not say read-only: {m!r}"
    assert sn.mounts("view").readonly, "mounts() of a view is not read-only"
    with mounted(m, work) as root:
        _errno(errno.EROFS, "create a file in a view", lambda: (root / "testfile").write_bytes(b"testcontent"))
        _errno(errno.EROFS, "open a view's file for writing", lambda: open(root / "existing", "r+b").close())
        _errno(errno.EROFS, "mkdir in a view", lambda: os.mkdir(root / "newdir"))
        _errno(errno.EROFS, "chmod in a view", lambda: os.chmod(root / "existing", 0o600))
        _errno(errno.EROFS, "unlink in a view", lambda: os.unlink(root / "existing"))
        _errno(errno.EROFS, "rmdir in a view", lambda: os.rmdir(root / "dir"))
    with _raises(errors.FailedPrecondition, "commit of a view"):
        sn.commit("from-view", "view")
    assert sn.stat("view").kind is Kind.VIEW, "a refused commit changed the view"
    for fn in (sn.prepare, sn.view):
        with _raises(errors.FailedPrecondition, f"{fn.__name__} with a view as the parent"):
            fn("child", "view")
    sn.remove("view")
    sn.remove("committed")


@_register
def check_close_twice(sn: Snapshotter, work: pathlib.Path) -> None:
    """close() twice is fine; after close every other call is FailedPrecondition; nothing stays mounted."""
    commit_layer(sn, work, "n", [create_file("/f", b"f")])
    sn.remove("n")
    commit_layer(sn, work, "kept")
    sn.prepare("active", "kept")
    sn.close()
    sn.close()
    calls: dict[str, Callable[[], object]] = {
        "prepare": lambda: sn.prepare("x"), "view": lambda: sn.view("y", "kept"),
        "commit": lambda: sn.commit("z", "active"), "remove": lambda: sn.remove("active"),
        "stat": lambda: sn.stat("kept"), "update": lambda: sn.update("kept", labels={}),
        "usage": lambda: sn.usage("kept"), "mounts": lambda: sn.mounts("active"), "walk": lambda: list(sn.walk()),
    }
    for name, call in calls.items():
        with _raises(errors.FailedPrecondition, f"{name} after close"):
            call()
    root = getattr(sn, "root", None)
    if root:
        left = leftover_mounts(root)
        assert not left, f"close() left mounts under the store: {left}"
