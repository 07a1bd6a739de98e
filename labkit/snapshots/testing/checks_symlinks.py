"""Conformance checks: host-side code never follows a symlink that a container planted in its root filesystem.

The container (here: the check, writing into a mounted snapshot) replaces files and directories of its
image with symlinks to host paths outside the store — a sentinel directory holding a file, under
``work`` — and to ``/dev/zero``. Whatever the backend does afterwards (overlay's commit relinks hard links
and copies directories up, copy and reflink copy whole trees, usage walks them, a view shows them) must
treat them as symlinks: the sentinels are never opened, listed, read, written or added to (inotify
watches them; their manifest is compared before and after), and each committed image holds the symlinks
verbatim, as the flat reference tree does.
"""
from __future__ import annotations

import ctypes
import os
import pathlib
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from ..._sys.libc import check, libc
from ..base import Snapshotter
from .helpers import _register, check_layers, mount_point, mounted, tree_manifest
from .ops import create_dir, create_file, link, remove_all, symlink, write_at

_IN_ALL_EVENTS = 0xFFF          # access, modify, attrib, close, open, move, create, delete, delete/move self
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_NAMES = {0x1: "read", 0x2: "written", 0x4: "attributes changed", 0x8: "closed after writing",
          0x10: "closed", 0x20: "opened", 0x40: "moved from", 0x80: "moved into", 0x100: "created in",
          0x200: "deleted from", 0x400: "deleted", 0x800: "moved"}


class HostSentinel:
    """A directory outside the store with one file in it, watched with inotify: what a check asserts the
    store never touched. ``dir`` and ``file`` are the symlink targets a container plants."""

    def __init__(self, work: str | os.PathLike[str]) -> None:
        self.dir = mount_point(work, "host")
        self.file = self.dir / "sentinel"
        self.file.write_bytes(b"host data: a container must not reach this\n")
        self.manifest = tree_manifest(self.dir)
        self._fd = check(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC), "inotify_init1")
        self._watches: dict[int, str] = {}
        for p in (self.dir, self.file):
            wd = check(libc.inotify_add_watch(self._fd, os.fsencode(p), ctypes.c_uint32(_IN_ALL_EVENTS)),
                       "inotify_add_watch", str(p))
            self._watches[wd] = str(p)

    def events(self) -> list[str]:
        """What happened to the sentinels since the last call, in words (empty: nothing)."""
        out: list[str] = []
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                return out
            i = 0
            while i < len(buf):
                wd, mask, _cookie, n = _EVENT.unpack_from(buf, i)
                name = buf[i + _EVENT.size: i + _EVENT.size + n].rstrip(b"\0").decode(errors="replace")
                i += _EVENT.size + n
                what = ", ".join(v for k, v in _NAMES.items() if mask & k) or f"event {mask:#x}"
                out.append(f"{self._watches.get(wd, '?')}{'/' + name if name else ''}: {what}")

    def assert_untouched(self, what: str) -> None:
        """AssertionError naming every access to the sentinels (and any change of their content)."""
        seen = self.events()
        assert not seen, f"{what}: the host side touched a container's symlink target outside the store: " \
                         + "; ".join(seen[:8])
        now = tree_manifest(self.dir)
        self.events()                        # (our own look at them just now)
        assert now == self.manifest, f"{what}: the host directory a container's symlink points to changed: " \
                                     f"{sorted(set(now) ^ set(self.manifest)) or now}"

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@contextmanager
def host_sentinel(work: str | os.PathLike[str]) -> Iterator[HostSentinel]:
    """A :class:`HostSentinel` under ``work``, its inotify watch closed afterwards."""
    s = HostSentinel(work)
    try:
        yield s
    finally:
        s.close()


def _exercise(sn: Snapshotter, work: pathlib.Path, names: list[str], host: HostSentinel) -> None:
    """What a host does with an image besides viewing it: usage of every layer, a container on the top one
    that lists its root and commits, and its removal."""
    for n in names:
        sn.usage(n)
    with mounted(sn.prepare("on-top", names[-1]), work) as root:
        os.listdir(root)
        sn.usage("on-top")
    sn.commit("on-top-c", "on-top")
    sn.usage("on-top-c")
    sn.remove("on-top-c")
    host.assert_untouched("usage, a child and its commit")


@_register
def check_symlink_replaces_directory(sn: Snapshotter, work: pathlib.Path) -> None:
    """A container replaces a directory of its image (holding hard links of a file it then writes through
    another name) with a symlink to a host directory, writes elsewhere and is committed: the host directory
    is untouched, the committed image holds the symlink as a symlink, and so do its children."""
    with host_sentinel(work) as host:
        names = check_layers(
            sn, work,
            [create_dir("/d/sub"), create_file("/d/f", b"image f"), link("/d/f", "/g"), link("/d/f", "/d/sub/h"),
             create_dir("/keep"), create_file("/keep/k", b"k")],
            [write_at("/g", 0, b"CHANGED"), remove_all("/d"), symlink(str(host.dir), "/d"),
             create_file("/keep/new", b"n"), create_file("/top", b"t")],
            [write_at("/g", 0, b"AGAIN!!"), create_file("/keep/k", b"k2"), create_dir("/e"),
             symlink(str(host.file), "/e/link")])
        host.assert_untouched("commit and views of a layer whose directory became a host symlink")
        _exercise(sn, work, names, host)


@_register
def check_symlink_to_device(sn: Snapshotter, work: pathlib.Path) -> None:
    """``/etc/passwd -> /dev/zero`` (and ``/etc/group`` -> a host file, after a write through one of its
    hard links) is committed, viewed, measured and copied as a symlink: nothing on the host side opens the
    target (reading /dev/zero would never end)."""
    with host_sentinel(work) as host:
        names = check_layers(
            sn, work,
            [create_dir("/etc"), create_file("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
             create_file("/etc/group", b"root:x:0:\n"), link("/etc/group", "/group-alias"),
             create_file("/etc/hosts", b"127.0.0.1 localhost\n")],
            [remove_all("/etc/passwd"), symlink("/dev/zero", "/etc/passwd"), write_at("/group-alias", 0, b"ROOT"),
             remove_all("/etc/group"), symlink(str(host.file), "/etc/group"), symlink("/dev/zero", "/zero")],
            [create_file("/etc/hosts", b"127.0.0.1 changed\n")])
        host.assert_untouched("a layer with symlinks to /dev/zero and to a host file")
        _exercise(sn, work, names, host)


@_register
def check_hardlink_then_symlink(sn: Snapshotter, work: pathlib.Path) -> None:
    """A container hard-links a file of its image inside the snapshot, writes through the new name, and
    replaces other names of that file (and the directory of one) with symlinks to the host: the commit
    keeps every name the container still sees as one file, the symlinks as symlinks, and the host is
    untouched; a later layer does the same to the new link."""
    with host_sentinel(work) as host:
        names = check_layers(
            sn, work,
            [create_file("/h1", b"one"), link("/h1", "/h2"), create_dir("/dir"), link("/h1", "/dir/h3"),
             link("/h1", "/h4"), create_file("/solo", b"solo")],
            [link("/h1", "/inside"), write_at("/inside", 0, b"ONE"), remove_all("/h2"), symlink(str(host.file), "/h2"),
             remove_all("/dir"), symlink(str(host.dir), "/dir"), link("/solo", "/solo-link"),
             write_at("/solo-link", 0, b"SOLO"), remove_all("/solo"), symlink(str(host.file), "/solo")],
            [write_at("/h4", 0, b"4"), remove_all("/inside"), symlink(str(host.dir), "/inside"),
             link("/solo-link", "/solo-2"), remove_all("/solo-link"), symlink(str(host.dir), "/solo-link")])
        host.assert_untouched("commits of hard links whose other names became host symlinks")
        _exercise(sn, work, names, host)
