"""Fixtures of the conformance suite: the check registry, mounting onto scratch directories, tree
manifests (types, modes, owners, SHA-256 digests, xattrs, hard links) and their comparison, building a
chain of layers beside a flat reference tree, and the small assertion helpers every check module uses.

>>> import tempfile
>>> tree_manifest(tempfile.mkdtemp())["."]["type"]
'dir'
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import os
import pathlib
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..._sys.mounts import mounts_under
from ..base import Info, Mount, Snapshotter
from .ops import MiB, Op, apply

__all__ = ["CHECKS", "Check", "mounted", "mount_point", "commit_layer", "check_layers", "assert_view",
           "tree_manifest", "assert_same_tree", "leftover_mounts"]

Check = Callable[[Snapshotter, pathlib.Path], None]
#: a tree as the suite compares it: path -> {"type", "mode", "uid", "gid", "xattrs", "size", "sha256", ...}
Manifest = dict[str, dict[str, Any]]
CHECKS: dict[str, Check] = {}
"""Every check by name (``check_rename`` is ``"rename"``), in the order the check modules define them."""


def _register(fn: Check) -> Check:
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


# ---- mounting -------------------------------------------------------------------------------------------
def mount_point(work: str | os.PathLike[str], name: str = "mnt") -> pathlib.Path:
    """A new empty directory under ``work`` to mount onto (``work`` is created if missing)."""
    os.makedirs(work, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))


@contextmanager
def mounted(m: Mount, work: str | os.PathLike[str], name: str = "mnt") -> Iterator[pathlib.Path]:
    """Mount ``m`` on a new directory under ``work``; always unmounted when the block ends (even on error).

    >>> with mounted(sn.prepare("c1"), work) as root:      # doctest: +SKIP
    ...     (root / "hello").write_text("hi")
    """
    if not isinstance(m, Mount):
        raise AssertionError(f"expected a Mount, got {m!r}")
    target = mount_point(work, name)
    with m.mount(target):
        yield target


def leftover_mounts(path: str | os.PathLike[str]) -> list[str]:
    """Targets of mounts at or below ``path`` (deepest first): what a check or a closed backend left behind."""
    return [m.target for m in mounts_under(os.fspath(path))]


# ---- comparing trees ------------------------------------------------------------------------------------
_TYPES = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
          stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev", stat.S_IFSOCK: "socket"}


def _user_xattrs(p: str) -> dict[str, str]:
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {n: os.getxattr(p, n, follow_symlinks=False).hex() for n in sorted(names) if n.startswith("user.")}


def _sha256(p: str) -> str:
    h = hashlib.sha256()
    with open(p, "rb", buffering=0) as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def tree_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Everything the suite compares about the tree under ``root``, one entry per path ("." is the root).

    >>> tree_manifest(tempfile.mkdtemp())["."]["type"]
    'dir'
    """
    root = os.fspath(root)
    out: Manifest = {}
    by_inode: dict[tuple[int, int], list[str]] = {}
    stack = ["."]
    while stack:
        rel = stack.pop()
        p = root if rel == "." else os.path.join(root, rel)
        st = os.lstat(p)
        kind = _TYPES.get(stat.S_IFMT(st.st_mode), f"?{stat.S_IFMT(st.st_mode):o}")
        e: dict[str, Any] = {"type": kind, "mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid,
                             "gid": st.st_gid, "xattrs": _user_xattrs(p)}
        if kind == "dir":
            for name in os.listdir(p):
                stack.append(name if rel == "." else os.path.join(rel, name))
        else:
            e["mtime"] = int(st.st_mtime)
            by_inode.setdefault((st.st_dev, st.st_ino), []).append(rel)
        if kind == "file":
            e["size"] = st.st_size
            e["sha256"] = _sha256(p)[:16]
        elif kind == "symlink":
            e["target"] = os.readlink(p)
        elif kind in ("chardev", "blockdev"):
            e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        out[rel] = e
    for names in by_inode.values():
        if len(names) > 1:
            for n in names:
                out[n]["links"] = tuple(sorted(names))
    return out


def _diff(expected: Manifest, actual: Manifest) -> list[str]:
    lines = []
    for p in sorted(expected.keys() | actual.keys()):
        if p not in actual:
            lines.append(f"  missing   {p} ({expected[p]['type']})")
            continue
        if p not in expected:
            lines.append(f"  unexpected {p} ({actual[p]['type']})")
            continue
        e, a = expected[p], actual[p]
        if e != a:
            fields = [f"{k}: expected {e.get(k)!r}, got {a.get(k)!r}" for k in sorted(e.keys() | a.keys())
                      if e.get(k) != a.get(k)]
            lines.append(f"  differs   {p}: " + "; ".join(fields))
    return lines


def assert_same_tree(expected: str | os.PathLike[str] | Manifest, actual: str | os.PathLike[str] | Manifest,
                     what: str = "tree") -> None:
    """AssertionError listing the differences when the two trees (paths or manifests) differ."""
    e = expected if isinstance(expected, dict) else tree_manifest(expected)
    a = actual if isinstance(actual, dict) else tree_manifest(actual)
    lines = _diff(e, a)
    if lines:
        more = f"\n  ... and {len(lines) - 25} more" if len(lines) > 25 else ""
        raise AssertionError(f"{what}: {len(lines)} difference(s) from the expected tree:\n"
                             + "\n".join(lines[:25]) + more)


def _flat(work: str | os.PathLike[str], name: str = "flat") -> pathlib.Path:
    d = mount_point(work, name)
    os.chmod(d, 0o755)
    return d


# ---- building layers ------------------------------------------------------------------------------------
def commit_layer(sn: Snapshotter, work: str | os.PathLike[str], name: str, ops: Sequence[Op] = (),
                 parent: str | None = None, *, labels: dict[str, str] | None = None) -> str:
    """prepare ``name + "-active"`` on ``parent``, mount it, apply ``ops``, unmount, commit as ``name``."""
    key = f"{name}-active"
    m = sn.prepare(key, parent)
    with mounted(m, work, "layer") as root:
        apply(root, *ops)
    sn.commit(name, key, labels=labels)
    return name


_views = itertools.count()


def assert_view(sn: Snapshotter, work: str | os.PathLike[str], name: str,
                expected: str | os.PathLike[str] | Manifest, what: str | None = None) -> None:
    """A view of committed ``name`` must equal ``expected`` (a directory or a manifest); the view is removed."""
    key = f"{name}-view-{next(_views)}"
    m = sn.view(key, name)
    try:
        with mounted(m, work, "view") as root:
            assert_same_tree(expected, root, what or f"view of {name!r}")
    finally:
        sn.remove(key)


_layer_sets = itertools.count()


def check_layers(sn: Snapshotter, work: str | os.PathLike[str], *layers: Sequence[Op],
                 prefix: str | None = None) -> list[str]:
    """containerd's ``checkSnapshots``: commit a chain, one layer per ``ops`` list, applying the same ops to
    a flat directory; after each commit a view of the new snapshot must equal the flat directory."""
    prefix = prefix or f"chain{next(_layer_sets)}"
    flat = _flat(work)
    names: list[str] = []
    parent = None
    for i, ops in enumerate(layers, 1):
        name = commit_layer(sn, work, f"{prefix}-{i}", ops, parent)
        apply(flat, *ops)
        assert_view(sn, work, name, flat, f"layer {i} of {len(layers)} ({name!r})")
        names.append(name)
        parent = name
    return names


# ---- small assertion helpers ----------------------------------------------------------------------------
@contextmanager
def _raises(exc: type[BaseException], what: str) -> Iterator[None]:
    try:
        yield
    except exc:
        return
    except Exception as e:
        raise AssertionError(f"{what}: expected {exc.__name__}, got {type(e).__name__}: {e}") from e
    raise AssertionError(f"{what}: expected {exc.__name__}, but it succeeded")


def _errno(expected: int, what: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except OSError as e:
        if e.errno != expected:
            raise AssertionError(f"{what}: expected {errno.errorcode[expected]}, got {e!r}") from e
        return
    raise AssertionError(f"{what}: expected {errno.errorcode[expected]}, but it succeeded")


def _names(infos: Iterator[Info] | list[Info]) -> list[str]:
    return [i.name for i in infos]


def _store_state(sn: Snapshotter) -> tuple[set[str], list[str]]:
    """Paths under the store root (the metadata database aside) and mounts under it."""
    root = getattr(sn, "root", None)
    if root is None:
        return set(), []
    paths = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames + filenames:
            p = os.path.normpath(os.path.join(rel, n))
            if not p.startswith("metadata.db"):
                paths.add(p)
    return paths, leftover_mounts(root)


def _assert_nothing_behind(sn: Snapshotter, before_walk: list[Info], before_store: tuple[set[str], list[str]],
                           what: str) -> None:
    after_walk = list(sn.walk())
    assert after_walk == before_walk, f"{what} changed the snapshots: {_names(before_walk)} -> {_names(after_walk)}"
    paths, mnts = _store_state(sn)
    extra, gone = paths - before_store[0], before_store[0] - paths
    assert not extra and not gone, f"{what} left storage behind: new {sorted(extra)[:5]}, gone {sorted(gone)[:5]}"
    assert mnts == before_store[1], f"{what} changed the store's mounts: {before_store[1]} -> {mnts}"


def _user_xattrs_supported(root: pathlib.Path) -> bool:
    p = root / ".xattr-probe"
    p.write_bytes(b"")
    try:
        os.setxattr(p, "user.probe", b"1")
        return True
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        p.unlink()
