"""Make one directory tree equal to another, touching only what differs (a naive ``docker diff`` + apply).

Used to commit a container that is still mounted (frozen): the container keeps its snapshot, and a fresh
snapshot of its image receives only the differences, so unchanged files stay shared with the image on
copy-on-write backends. An entry differs when its type, mode, owner, size, mtime (ns), symlink target or
device number differ. Hard links inside the source are recreated as hard links. Nothing is followed:
symlinks are compared and copied as links, and the walk never leaves the source's filesystem.

>>> import tempfile, os
>>> a, b = tempfile.mkdtemp(), tempfile.mkdtemp()
>>> _ = open(os.path.join(a, "new"), "w").write("x"); _ = open(os.path.join(b, "old"), "w").write("y")
>>> sorted(sync_tree(a, b).items())
[('copied', 1), ('removed', 1)]
>>> os.listdir(b)
['new']
"""
from __future__ import annotations

import os
import shutil
import stat

__all__ = ["sync_tree"]


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode) and a.st_mode == b.st_mode and a.st_uid == b.st_uid
            and a.st_gid == b.st_gid and a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns
            and a.st_rdev == b.st_rdev)


def _meta(src: str, dst: str, st: os.stat_result) -> None:
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        for name in os.listxattr(src, follow_symlinks=False):
            try:
                os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
            except OSError:
                pass
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def sync_tree(src: str, dst: str) -> dict[str, int]:
    """Make ``dst`` equal to ``src``; returns counts of entries copied and removed."""
    counts = {"copied": 0, "removed": 0}
    links: dict[tuple[int, int], str] = {}
    dev = os.lstat(src).st_dev
    dirs: list[tuple[str, str, os.stat_result]] = []

    def walk(s: str, d: str) -> None:
        names = set(os.listdir(s))
        for name in sorted(set(os.listdir(d)) - names):
            _remove(os.path.join(d, name))
            counts["removed"] += 1
        for name in sorted(names):
            sp, dp = os.path.join(s, name), os.path.join(d, name)
            st = os.lstat(sp)
            try:
                dt: os.stat_result | None = os.lstat(dp)
            except FileNotFoundError:
                dt = None
            if stat.S_ISDIR(st.st_mode):
                if dt is not None and not stat.S_ISDIR(dt.st_mode):
                    _remove(dp)
                    dt = None
                if dt is None:
                    os.mkdir(dp, 0o700)
                    counts["copied"] += 1
                if st.st_dev == dev:
                    walk(sp, dp)
                dirs.append((sp, dp, st))
                continue
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                if dt is None or not os.path.samefile(links[key], dp):
                    if dt is not None:
                        _remove(dp)
                    os.link(links[key], dp, follow_symlinks=False)
                    counts["copied"] += 1
                continue
            if st.st_nlink > 1:
                links[key] = dp
            link_ok = (stat.S_ISLNK(st.st_mode) and dt is not None and stat.S_ISLNK(dt.st_mode)
                       and os.readlink(sp) == os.readlink(dp))
            if dt is not None and _same(st, dt) and (link_ok or not stat.S_ISLNK(st.st_mode)) \
                    and (dt.st_nlink == 1 or st.st_nlink > 1):
                continue
            if dt is not None:
                _remove(dp)
            if stat.S_ISREG(st.st_mode):
                shutil.copyfile(sp, dp, follow_symlinks=False)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(sp), dp)
            else:
                os.mknod(dp, st.st_mode, st.st_rdev)
            _meta(sp, dp, st)
            counts["copied"] += 1

    walk(src, dst)
    for sp, dp, st in reversed(dirs):
        _meta(sp, dp, st)
    _meta(src, dst, os.lstat(src))
    return counts
