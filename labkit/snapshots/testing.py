"""The conformance suite every snapshot backend passes (after containerd's ``core/snapshots/testsuite``).

Each check is a function ``check_<name>(sn, work)`` that drives a fresh, empty :class:`Snapshotter` through
the public contract only (prepare, view, commit, remove, stat, update, usage, mounts, walk, close and the
returned :class:`Mount` values) and raises ``AssertionError`` naming what went wrong. ``work`` is a scratch
directory for mount targets and reference trees; every mount a check makes is undone when the check ends,
even when it fails (``with mount.mount(target):``). :data:`CHECKS` lists them all, in order.

Most content checks follow containerd's method: the same small operations (``create_file``, ``chown``,
``rename``, ...) are applied to a snapshot and to a plain reference directory (the *flat* tree), each layer
is committed, and a view of the committed snapshot must equal the flat tree: types, modes, owners, sizes,
SHA-256 of contents, file mtimes (whole seconds), symlink targets, device numbers, ``user.*`` xattrs and
which names are hard links of each other. Directory mtimes are not compared.

A new backend does not write its own copy of these checks: registering it in
``labkit/snapshots/__init__.py`` is enough, ``tests/snapshots/test_conformance.py`` runs every check against
every registered backend (skipping, with the reason, those the host cannot run). To run one check by hand
(as root)::

    >>> import pathlib, tempfile                                      # doctest: +SKIP
    >>> from labkit.snapshots import open_snapshotter                 # doctest: +SKIP
    >>> from labkit.snapshots.testing import CHECKS, run_check        # doctest: +SKIP
    >>> run_check("mybackend", "rename", tempfile.mkdtemp())          # doctest: +SKIP
    >>> tmp = pathlib.Path(tempfile.mkdtemp())     # or by hand, with your own snapshotter   # doctest: +SKIP
    >>> sn = open_snapshotter("mybackend", tmp / "store")             # doctest: +SKIP
    >>> try:                                                          # doctest: +SKIP
    ...     CHECKS["basic"](sn, tmp / "work")
    ... finally:
    ...     sn.close()

Helpers (``mounted``, ``commit_layer``, ``check_layers``, ``assert_same_tree``, the operations) are public
so that experiments and notebooks can build layered snapshots the same way.
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import os
import pathlib
import socket
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from .. import errors
from .._sys.mounts import mounts_under
from .base import Info, Kind, Mount, Snapshotter

__all__ = ["CHECKS", "run_check", "mounted", "mount_point", "commit_layer", "check_layers", "assert_view",
           "tree_manifest", "assert_same_tree", "leftover_mounts", "Op", "apply", "create_file", "create_dir",
           "remove_all", "chown", "chmod", "rename", "link", "symlink", "set_xattr", "remove_xattr",
           "set_mtime", "write_at", "mkfifo", "mknod", "mksock", "MTIME"]

Check = Callable[[Snapshotter, pathlib.Path], None]
CHECKS: dict[str, Check] = {}

MiB = 1 << 20
MTIME = 1_600_000_000
"""The mtime (whole seconds) every file written by an operation gets, so that flat and snapshot agree."""


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


# ---- operations: applied identically to a snapshot's mount and to the flat reference tree ---------------
Op = Callable[[pathlib.Path], None]


def _op(desc: str, fn: Callable[[pathlib.Path], None]) -> Op:
    fn.__qualname__ = fn.__name__ = desc
    return fn


def _p(root: pathlib.Path, path: str) -> pathlib.Path:
    return root / path.lstrip("/")


def apply(root: str | os.PathLike[str], *ops: Op) -> None:
    """Apply ``ops`` in order under ``root``."""
    root = pathlib.Path(root)
    for op in ops:
        try:
            op(root)
        except OSError as e:
            raise AssertionError(f"operation {op.__name__} under {root} failed: {e}") from e


def create_file(path: str, data: bytes = b"", mode: int = 0o644, *, mtime: int = MTIME) -> Op:
    """Write ``data`` to ``path`` (an existing file is truncated in place, keeping its inode), set mode and mtime."""
    def op(root: pathlib.Path) -> None:
        p = _p(root, path)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data) if len(data) < MiB else _write_all(fd, data)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.utime(p, (mtime, mtime))
    return _op(f"create_file({path!r}, {len(data)} bytes, {mode:#o})", op)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_at(path: str, offset: int, data: bytes, *, mtime: int = MTIME) -> Op:
    """Overwrite ``data`` at ``offset`` inside an existing file (no truncation), then set its mtime."""
    def op(root: pathlib.Path) -> None:
        p = _p(root, path)
        fd = os.open(p, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.utime(p, (mtime, mtime))
    return _op(f"write_at({path!r}, {offset}, {len(data)} bytes)", op)


def create_dir(path: str, mode: int = 0o755) -> Op:
    """mkdir -p ``path`` and set its mode."""
    def op(root: pathlib.Path) -> None:
        p = _p(root, path)
        os.makedirs(p, exist_ok=True)
        os.chmod(p, mode)
    return _op(f"create_dir({path!r}, {mode:#o})", op)


def remove_all(path: str) -> Op:
    """rm -rf ``path``."""
    def op(root: pathlib.Path) -> None:
        p = _p(root, path)
        if p.is_dir() and not p.is_symlink():
            for dirpath, dirnames, filenames in os.walk(p, topdown=False):
                for n in filenames:
                    os.unlink(os.path.join(dirpath, n))
                for n in dirnames:
                    q = os.path.join(dirpath, n)
                    os.unlink(q) if os.path.islink(q) else os.rmdir(q)
            os.rmdir(p)
        elif os.path.lexists(p):
            os.unlink(p)
    return _op(f"remove_all({path!r})", op)


def chown(path: str, uid: int, gid: int) -> Op:
    """lchown ``path``."""
    return _op(f"chown({path!r}, {uid}, {gid})", lambda root: os.lchown(_p(root, path), uid, gid))


def chmod(path: str, mode: int) -> Op:
    """chmod ``path``."""
    return _op(f"chmod({path!r}, {mode:#o})", lambda root: os.chmod(_p(root, path), mode))


def rename(src: str, dst: str, *, exdev_fallback: bool = False) -> Op:
    """rename(2) ``src`` to ``dst``. With ``exdev_fallback``, EXDEV (overlayfs renaming a directory of a
    lower layer without ``redirect_dir``) is handled as mv(1) does: copy the tree, then remove the source."""
    def op(root: pathlib.Path) -> None:
        s, d = _p(root, src), _p(root, dst)
        try:
            os.rename(s, d)
        except OSError as e:
            if not (exdev_fallback and e.errno == errno.EXDEV):
                raise
            _copy_like_mv(s, d)
            remove_all(src)(root)
    return _op(f"rename({src!r}, {dst!r})", op)


def _copy_like_mv(s: pathlib.Path, d: pathlib.Path) -> None:
    import shutil
    shutil.copytree(s, d, symlinks=True, copy_function=shutil.copy2)
    for dirpath, dirnames, filenames in os.walk(s):
        rel = os.path.relpath(dirpath, s)
        for n in [".", *dirnames, *filenames]:
            sp, dp = os.path.join(dirpath, n), os.path.join(d, rel, n)
            st = os.lstat(sp)
            os.lchown(dp, st.st_uid, st.st_gid)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(dp, stat.S_IMODE(st.st_mode))
            os.utime(dp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def link(src: str, dst: str) -> Op:
    """Hard link ``dst`` to ``src``."""
    return _op(f"link({src!r}, {dst!r})", lambda root: os.link(_p(root, src), _p(root, dst), follow_symlinks=False))


def symlink(target: str, path: str, *, mtime: int = MTIME) -> Op:
    """Symlink ``path`` -> ``target`` (stored verbatim), with the symlink's own mtime set."""
    def op(root: pathlib.Path) -> None:
        p = _p(root, path)
        os.symlink(target, p)
        os.utime(p, (mtime, mtime), follow_symlinks=False)
    return _op(f"symlink({target!r}, {path!r})", op)


def set_xattr(path: str, name: str, value: bytes) -> Op:
    """setxattr (not following symlinks)."""
    return _op(f"set_xattr({path!r}, {name!r})",
               lambda root: os.setxattr(_p(root, path), name, value, follow_symlinks=False))


def remove_xattr(path: str, name: str) -> Op:
    """removexattr (not following symlinks)."""
    return _op(f"remove_xattr({path!r}, {name!r})",
               lambda root: os.removexattr(_p(root, path), name, follow_symlinks=False))


def set_mtime(path: str, mtime: int) -> Op:
    """Set atime and mtime of ``path`` itself (a symlink is not followed)."""
    return _op(f"set_mtime({path!r}, {mtime})",
               lambda root: os.utime(_p(root, path), (mtime, mtime), follow_symlinks=False))


def mkfifo(path: str, mode: int = 0o644) -> Op:
    """A named pipe."""
    def op(root: pathlib.Path) -> None:
        os.mkfifo(_p(root, path))
        os.chmod(_p(root, path), mode)
    return _op(f"mkfifo({path!r}, {mode:#o})", op)


def mknod(path: str, kind: str, major: int, minor: int, mode: int = 0o600) -> Op:
    """A character (``kind="c"``) or block (``"b"``) device node (needs CAP_MKNOD)."""
    def op(root: pathlib.Path) -> None:
        fmt = stat.S_IFCHR if kind == "c" else stat.S_IFBLK
        os.mknod(_p(root, path), fmt | mode, os.makedev(major, minor))
        os.chmod(_p(root, path), mode)
    return _op(f"mknod({path!r}, {kind}, {major}, {minor})", op)


def mksock(path: str, mode: int = 0o755) -> Op:
    """A unix socket node (bound through /proc/self/fd so that long paths work), left behind when closed."""
    def op(root: pathlib.Path) -> None:
        p = _p(root, path)
        dfd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.bind(f"/proc/self/fd/{dfd}/{p.name}")
        finally:
            os.close(dfd)
        os.chmod(p, mode)
    return _op(f"mksock({path!r})", op)


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


def tree_manifest(root: str | os.PathLike[str]) -> dict[str, dict]:
    """Everything the suite compares about the tree under ``root``, one entry per path ("." is the root).

    >>> tree_manifest(tempfile.mkdtemp())["."]["type"]
    'dir'
    """
    root = os.fspath(root)
    out: dict[str, dict] = {}
    by_inode: dict[tuple[int, int], list[str]] = {}
    stack = ["."]
    while stack:
        rel = stack.pop()
        p = root if rel == "." else os.path.join(root, rel)
        st = os.lstat(p)
        kind = _TYPES.get(stat.S_IFMT(st.st_mode), f"?{stat.S_IFMT(st.st_mode):o}")
        e: dict = {"type": kind, "mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid, "gid": st.st_gid,
                   "xattrs": _user_xattrs(p)}
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


def _diff(expected: dict[str, dict], actual: dict[str, dict]) -> list[str]:
    lines = []
    for p in sorted(expected.keys() | actual.keys()):
        e, a = expected.get(p), actual.get(p)
        if a is None:
            lines.append(f"  missing   {p} ({e['type']})")
        elif e is None:
            lines.append(f"  unexpected {p} ({a['type']})")
        elif e != a:
            fields = [f"{k}: expected {e.get(k)!r}, got {a.get(k)!r}" for k in sorted(e.keys() | a.keys())
                      if e.get(k) != a.get(k)]
            lines.append(f"  differs   {p}: " + "; ".join(fields))
    return lines


def assert_same_tree(expected: str | os.PathLike[str] | dict, actual: str | os.PathLike[str] | dict,
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
                expected: str | os.PathLike[str] | dict, what: str | None = None) -> None:
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
    except Exception as e:  # noqa: BLE001 - reported as the wrong error
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


# ============================================================================================================
# The checks. containerd's 21 first (same names, same trees), then labkit's own.
# ============================================================================================================
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
        assert new.updated >= t0 - 0.001 and new.updated > st.updated, f"{key}: updated not bumped: {st.updated} -> {new.updated}"
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


@_register
def check_layer_file_update(sn: Snapshotter, work: pathlib.Path) -> None:
    """A file rewritten in a child with the same size and the same mtime still shows the new content
    (docker#21555: a diff by size+mtime misses it)."""
    l1 = [create_dir("/etc", 0o700), create_file("/etc/hosts", b"mydomain 10.0.0.1"),
          create_file("/etc/profile", b"PATH=/usr/bin")]
    l2 = [create_file("/etc/hosts", b"mydomain 10.0.0.2"), create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
          create_dir("/root", 0o700), create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin")]
    for _ in range(2):
        check_layers(sn, work, l1, l2)


@_register
def check_remove_directory_in_lower_layer(sn: Snapshotter, work: pathlib.Path) -> None:
    """A directory removed and re-made in a child does not show the lower layer's files (docker#25244)."""
    check_layers(sn, work,
                 [create_dir("/lib", 0o700), create_file("/lib/hidden")],
                 [remove_all("/lib"), create_dir("/lib", 0o700), create_file("/lib/not-hidden")],
                 [create_file("/lib/newfile")])


@_register
def check_chown(sn: Snapshotter, work: pathlib.Path) -> None:
    """chown of inherited directories and files in a child is committed (docker#20240, #24913, #28391)."""
    check_layers(sn, work,
                 [create_dir("/opt", 0o700), create_dir("/opt/a", 0o700), create_dir("/opt/a/b", 0o700),
                  create_file("/opt/a/b/file.txt", b"hello")],
                 [chown("/opt", 1, 1), chown("/opt/a", 1, 1), chown("/opt/a/b", 1, 1),
                  chown("/opt/a/b/file.txt", 1, 1)])


@_register
def check_directory_permission_on_commit(sn: Snapshotter, work: pathlib.Path) -> None:
    """Owners of directories survive commits, removal and re-creation across three layers (docker#27298)."""
    check_layers(sn, work,
                 [create_dir("/dir1", 0o700), create_dir("/dir2", 0o700), create_dir("/dir3", 0o700),
                  create_dir("/dir4", 0o700), create_file("/dir4/f1", b"..."), create_dir("/dir5", 0o700),
                  create_file("/dir5/f1", b"..."), chown("/dir1", 1, 1), chown("/dir2", 1, 1),
                  chown("/dir3", 1, 1), chown("/dir5", 1, 1), chown("/dir5/f1", 1, 1)],
                 [chown("/dir2", 0, 0), remove_all("/dir3"), chown("/dir4", 1, 1), chown("/dir4/f1", 1, 1)],
                 [create_dir("/dir3", 0o700), chown("/dir3", 1, 1), remove_all("/dir5"),
                  create_dir("/dir5", 0o700), chown("/dir5", 1, 1)])


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
def check_deleted_files_in_child(sn: Snapshotter, work: pathlib.Path) -> None:
    """Files and directories deleted in a child stay deleted in the committed child and in a grandchild."""
    check_layers(sn, work,
                 [create_file("/foo", b"foo\n", 0o777), create_file("/foobar", b"foobar\n", 0o777),
                  create_dir("/d/e"), create_file("/d/e/f", b"f"), create_file("/d/keep", b"k")],
                 [remove_all("/foobar"), remove_all("/d/e")],
                 [])


@_register
def check_move_file_from_lower_layer(sn: Snapshotter, work: pathlib.Path) -> None:
    """Files moved (hard link + remove) out of a lower layer's directory appear only at the new place."""
    check_layers(sn, work,
                 [create_dir("/dir1", 0o700), create_file("/dir1/f1", b"Hello"), create_dir("/dir2", 0o700),
                  create_file("/dir2/f2", b"...")],
                 [create_dir("/dir3", 0o700), create_file("/dir3/f1", b"Hello"), remove_all("/dir1"),
                  link("/dir2/f2", "/dir3/f2"), remove_all("/dir2/f2")])


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
    calls = {
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


@_register
def check_root_permission(sn: Snapshotter, work: pathlib.Path) -> None:
    """A new snapshot's root is 0755 root:root; a changed root mode and owner are kept by commit and
    inherited by children."""
    with mounted(sn.prepare("preparing"), work) as root:
        st = os.stat(root)
        assert stat.S_IMODE(st.st_mode) == 0o755, f"root of a new snapshot is {stat.S_IMODE(st.st_mode):#o}, not 0o755"
        assert (st.st_uid, st.st_gid) == (0, 0), f"root of a new snapshot is owned by {st.st_uid}:{st.st_gid}"
        os.chmod(root, 0o700)
        os.chown(root, 1000, 1001)
    sn.commit("restricted", "preparing")

    def root_of(m: Mount) -> tuple[int, int, int]:
        with mounted(m, work) as r:
            st = os.stat(r)
            return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid

    assert root_of(sn.view("v", "restricted")) == (0o700, 1000, 1001), "a view lost the committed root's mode/owner"
    with mounted(sn.prepare("child", "restricted"), work) as r:
        st = os.stat(r)
        got = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        assert got == (0o700, 1000, 1001), f"a child's root is {got[0]:#o} {got[1]}:{got[2]}, its parent's is 0o700 1000:1001"
        os.chmod(r, 0o750)
    sn.commit("child-c", "child")
    assert root_of(sn.view("v2", "child-c")) == (0o750, 1000, 1001), "the child's root mode was not committed"
    assert root_of(sn.view("v3", "restricted")) == (0o700, 1000, 1001), "the child's chmod changed its parent"


@_register
def check_rename(sn: Snapshotter, work: pathlib.Path) -> None:
    """Renames in a child: a directory of a lower layer (rename(2) itself must work: EXDEV, as overlayfs
    gives without ``redirect_dir=on``, fails the check), a directory made in the same layer, files over
    files, files into other directories (docker#25409)."""
    check_layers(sn, work,
                 [create_dir("/dir1", 0o700), create_file("/dir1/inside", b"in dir1"), create_dir("/somefiles", 0o700),
                  create_file("/somefiles/f1", b"was here first!"), create_file("/somefiles/f2", b"nothing interesting"),
                  create_file("/somefiles/f4", b"moves")],
                 [rename("/dir1", "/dir2"),
                  create_file("/somefiles/f1-overwrite", b"new content 1"),
                  rename("/somefiles/f1-overwrite", "/somefiles/f1"),
                  rename("/somefiles/f2", "/somefiles/f3"),
                  rename("/somefiles/f4", "/dir2/f4"),
                  create_dir("/fresh/sub", 0o750), create_file("/fresh/sub/x", b"x"),
                  rename("/fresh", "/renamed-fresh")],
                 [rename("/somefiles/f3", "/f3-at-top"), rename("/dir2/inside", "/dir2/inside-renamed")])


@_register
def check_128_layers_mount(sn: Snapshotter, work: pathlib.Path) -> None:
    """A chain of 128 layers mounts; each prepare equals the flat tree, and the top view shows every layer's
    file, the last override of a rewritten file and only the last layer's re-made directory."""
    layers = [[create_file("/bottom", b"way at the bottom\n", 0o777), create_file("/overwriteme", b"FIRST!\n", 0o777),
               create_dir("/addhere"), create_dir("/onlyme"), create_file("/onlyme/bottom", b"bye!\n", 0o777)]]
    for i in range(1, 128):
        layers.append([create_file("/overwriteme", f"{i} WAS HERE!\n".encode(), 0o777),
                       create_file(f"/addhere/file-{i}", b"same\n", 0o755), remove_all("/onlyme"),
                       create_dir("/onlyme"), create_file(f"/onlyme/file-{i}", b"only me!\n", 0o777)])
    flat = _flat(work)
    parent = None
    for i, ops in enumerate(layers):
        key = f"prepare-layer-{i}"
        with mounted(sn.prepare(key, parent), work, "layer") as root:
            assert_same_tree(flat, root, f"layer {i} right after prepare")
            apply(flat, *ops)
            apply(root, *ops)
            assert_same_tree(flat, root, f"layer {i} after its changes")
        parent = f"committed-{i}"
        sn.commit(parent, key)
    with mounted(sn.view("fullview", parent), work) as root:
        assert_same_tree(flat, root, "a view of the 128th layer")
        assert (root / "overwriteme").read_bytes() == b"127 WAS HERE!\n"
        assert sorted(os.listdir(root / "onlyme")) == ["file-127"]
        assert len(os.listdir(root / "addhere")) == 127


# ---- labkit's own checks --------------------------------------------------------------------------------
@_register
def check_metadata_kept(sn: Snapshotter, work: pathlib.Path) -> None:
    """Owners (odd uids/gids), setuid/setgid/sticky/0600/0000 modes, symlinks (with their own owner and
    mtime), hard links, user.* xattrs (where the filesystem has them), file mtimes and odd names survive
    commit, and changes to them in a child are committed too."""
    with mounted(sn.prepare("probe"), work) as root:
        xattrs = _user_xattrs_supported(root)
    sn.remove("probe")
    long_name = "L" * 255
    l1 = [create_dir("/bin"), create_file("/bin/su", b"#!suid", 0o4755), create_file("/bin/sg", b"#!sgid", 0o2755),
          create_dir("/tmp", 0o1777), create_dir("/shared"), chown("/shared", 0, 50), chmod("/shared", 0o2775),
          create_file("/secret", b"s3cret", 0o600), chown("/secret", 12345, 54321),
          create_file("/nothing", b"none", 0o000), create_file("/empty", b""),
          create_dir("/home/u", 0o700), chown("/home/u", 1000, 1000), create_file("/home/u/f", b"u", 0o640),
          chown("/home/u/f", 65534, 123456789),
          symlink("/etc/passwd", "/abs"), symlink("bin/su", "/rel", mtime=1_500_000_000), symlink("home", "/dirlink"),
          chown("/rel", 777, 888), symlink("missing/target", "/dangling"),
          create_file("/h1", b"hard"), link("/h1", "/h2"), link("/h1", "/home/u/h3"),
          create_file("/old", b"old", mtime=0), create_file("/y2001", b"y", mtime=1_000_000_000),
          create_file("/y2096", b"z", mtime=4_000_000_000),
          create_file("/with space \u00fcn\u00ef", b"odd name"), create_file("/" + long_name, b"long name")]
    if xattrs:
        l1 += [set_xattr("/secret", "user.note", b"hello"), set_xattr("/home", "user.dir", b"d"),
               set_xattr("/h1", "user.bin", bytes(range(256)))]
    l2 = [chown("/secret", 54321, 12345), chmod("/bin/su", 0o4711), chmod("/tmp", 0o1770), chown("/rel", 1, 1),
          set_mtime("/old", 1_234_567_890), chmod("/nothing", 0o444), chown("/home/u", 2000, 2000),
          set_mtime("/dangling", 1_111_111_111)]
    if xattrs:
        l2 += [set_xattr("/secret", "user.note", b"changed"), remove_xattr("/home", "user.dir"),
               set_xattr("/empty", "user.new", b"")]
    check_layers(sn, work, l1, l2, [])


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


@_register
def check_committed_immutable(sn: Snapshotter, work: pathlib.Path) -> None:
    """Whatever a child does (rewrite in place, append, write through a hard link, chmod, chown, xattrs,
    truncate, delete, rename), its committed parent never changes: a view of it, taken while the child is
    mounted and after the child is committed, has the same checksums; a new child sees the original."""
    base_ops = [create_file("/a", b"A" * 10000), create_dir("/d"), create_file("/d/b", b"bbb"),
                create_file("/h1", b"linked"), link("/h1", "/h2"), symlink("a", "/sym"),
                create_file("/trunc", os.urandom(70000)), create_dir("/gone/deep"), create_file("/gone/deep/f", b"f")]
    commit_layer(sn, work, "base", base_ops)
    flat = _flat(work)
    apply(flat, *base_ops)
    expected = tree_manifest(flat)
    with mounted(sn.prepare("child", "base"), work) as root:
        xattrs = _user_xattrs_supported(root)
        apply(root, write_at("/a", 5000, b"changed"), write_at("/d/b", 3, b"appended"),
              write_at("/h2", 0, b"LINKED"), chmod("/a", 0o600), chown("/d/b", 7, 7),
              create_file("/trunc", b"short"), remove_all("/gone"), rename("/d", "/d2", exdev_fallback=True),
              remove_all("/sym"), symlink("d2", "/sym"))
        if xattrs:
            apply(root, set_xattr("/a", "user.x", b"1"))
        assert_view(sn, work, "base", expected, "the parent while its child is mounted and changed")
    sn.commit("child-c", "child")
    assert_view(sn, work, "base", expected, "the parent after its changed child was committed")
    with mounted(sn.prepare("child2", "base"), work) as root:
        assert_same_tree(expected, root, "a second child of the parent")


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
        for call in (lambda: sn.prepare(bad), lambda: sn.view(bad), lambda: sn.commit(bad, "spare")):
            with _raises(errors.InvalidArgument, f"key {bad[:20]!r}"):
                call()
    _assert_nothing_behind(sn, before, store, "an invalid key")


@_register
def check_not_found(sn: Snapshotter, work: pathlib.Path) -> None:
    """Every call naming an unknown snapshot is NotFound."""
    commit_layer(sn, work, "base")
    calls = {
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
def check_large_file(sn: Snapshotter, work: pathlib.Path) -> None:
    """An 8 MiB file stays byte-exact across a chain: partly overwritten in one child, extended in the next,
    untouched in the last."""
    data = os.urandom(8 * MiB)
    check_layers(sn, work,
                 [create_file("/big", data), create_file("/other", data[:MiB])],
                 [write_at("/big", 3 * MiB + 17, b"\xff" * 4096)],
                 [write_at("/big", 8 * MiB, os.urandom(MiB + 123))],
                 [create_file("/unrelated", b"x")])


@_register
def check_hardlink_across_layers(sn: Snapshotter, work: pathlib.Path) -> None:
    """A hard link made in a child to a file of a lower layer is the same file; a later layer writing
    through one name changes every name; removing one name keeps the others."""
    check_layers(sn, work,
                 [create_file("/f", b"one\n"), create_dir("/sub")],
                 [link("/f", "/g"), link("/f", "/sub/h")],
                 [write_at("/g", 4, b"two\n")],
                 [remove_all("/f")])


@_register
def check_special_files(sn: Snapshotter, work: pathlib.Path) -> None:
    """Fifos, sockets and (as root) character and block device nodes, with their numbers, owners and modes,
    survive commit; renamed, re-moded and removed in a child."""
    l1 = [create_dir("/dev"), mkfifo("/dev/fifo", 0o640), chown("/dev/fifo", 5, 6), mksock("/dev/sock")]
    l2 = [chmod("/dev/fifo", 0o600), mkfifo("/fifo2")]
    if os.geteuid() == 0:
        l1 += [mknod("/dev/null", "c", 1, 3, 0o666), mknod("/dev/loop250", "b", 7, 250, 0o660),
               chown("/dev/loop250", 0, 6)]
        l2 += [rename("/dev/null", "/dev/null2"), remove_all("/dev/loop250"), mknod("/dev/zero", "c", 1, 5, 0o666)]
    l2 += [remove_all("/dev/sock")]
    check_layers(sn, work, l1, l2)


@_register
def check_sparse_file(sn: Snapshotter, work: pathlib.Path) -> None:
    """A sparse file (holes at the start, the middle and the end) reads back the same across a chain,
    including when a child writes into a hole."""
    def sparse(root: pathlib.Path) -> None:
        with open(root / "sparse", "wb") as f:
            f.seek(MiB)
            f.write(b"start")
            f.seek(16 * MiB)
            f.write(b"middle")
            f.truncate(32 * MiB)
        os.utime(root / "sparse", (MTIME, MTIME))
    sparse_op = _op("sparse('/sparse')", sparse)
    check_layers(sn, work, [sparse_op], [write_at("/sparse", 24 * MiB, b"in the hole")])


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
def check_reopen(sn: Snapshotter, work: pathlib.Path) -> None:
    """Closing the snapshotter and opening a new one on the same root keeps every snapshot: the same walk,
    an active snapshot's content (through mounts()), committed content, and it can still be committed."""
    from . import open_snapshotter

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


# ---- running checks outside pytest ----------------------------------------------------------------------
def run_check(backend: str, name: str, tmp: str | os.PathLike[str], **options: object) -> None:
    """Run one check against ``backend`` with a fresh store in ``tmp/store`` and scratch space in
    ``tmp/work``; closes the snapshotter and fails if anything stays mounted under ``tmp``.

    >>> run_check("copy", "basic", tempfile.mkdtemp())     # doctest: +SKIP
    """
    from . import open_snapshotter

    tmp = pathlib.Path(tmp)
    sn = open_snapshotter(backend, tmp / "store", **options)
    try:
        CHECKS[name](sn, tmp / "work")
    finally:
        sn.close()
    left = leftover_mounts(tmp)
    assert not left, f"{name}: mounts left behind: {left}"
