"""Two processes on one store share its loop-file filesystem: closing one never unmounts it under the other;
the last one out unmounts it and its loop device goes with it; a mount left by a crashed process is found
again, not mounted twice."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labkit._sys import loop, mounts
from labkit.snapshots import backend_status, open_snapshotter
from labkit.snapshots.testing import mounted

CHILD = os.path.join(os.path.dirname(__file__), "_child.py")
_STATUS = {s.name: s for s in backend_status("/tmp")}
BACKENDS = [b for b in ("btrfs", "reflink") if _STATUS[b].available]

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices, mounts")]


class Other:
    """The other process: a snapshotter on the same store in ``_child.py hold-open``, driven line by line."""

    def __init__(self, backend: str, root) -> None:
        self.p = subprocess.Popen([sys.executable, CHILD, backend, str(root), "hold-open"], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        assert self.p.stdout.readline() == "open\n", f"the other process did not open the store ({self.p.wait()})"

    def __call__(self, line: str) -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        answer = self.p.stdout.readline()
        assert answer == "ok\n", f"the other process, asked to {line!r}, said {answer!r}"

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def _image_loops(root) -> list[str]:
    return [lp.dev for lp in loop.list_loops() if lp.backing_file.startswith(str(root) + "/")]


def _assert_released(root) -> None:
    assert not mounts.is_mountpoint(str(root / "mnt")), "the last close left the loop filesystem mounted"
    assert _image_loops(root) == [], f"the last close left loop devices {_image_loops(root)}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_process_closing_first_keeps_the_mount(backend, tmp_path):
    root, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    other = Other(backend, root)                           # A opens (and mounts)
    try:
        with open_snapshotter(backend, root) as sn:        # B opens: joins the mount
            assert len(_image_loops(root)) == 1
            other("prepare a")
            other("write a")
            other("close")                                 # A closes: B's mount stays
            assert mounts.is_mountpoint(str(root / "mnt"))
            m = sn.prepare("b")
            with mounted(m, work) as r:
                (r / "f").write_bytes(b"written after the other closed")
            with mounted(sn.mounts("a"), work) as r:
                assert (r / "f").read_text() == "a"
            sn.commit("b-c", "b")
        assert other.p.wait(timeout=60) == 0
        _assert_released(root)                             # B closes: all gone
    finally:
        other.kill()


@pytest.mark.parametrize("backend", BACKENDS)
def test_this_process_closing_first_keeps_the_mount(backend, tmp_path):
    root = tmp_path / "store"
    sn = open_snapshotter(backend, root)
    other = Other(backend, root)
    try:
        sn.close()                                         # B (here) closes first
        assert mounts.is_mountpoint(str(root / "mnt"))
        other("prepare a")
        other("write a")
        other("close")                                     # the last user: unmounts
        assert other.p.wait(timeout=60) == 0
        _assert_released(root)
    finally:
        sn.close()
        other.kill()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mount_of_a_killed_process_is_found_again(backend, tmp_path):
    root, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    other = Other(backend, root)
    other("prepare a")
    other("write a")
    other.kill()                                           # SIGKILL: no close, the mount stays
    assert mounts.is_mountpoint(str(root / "mnt"))
    first = _image_loops(root)
    with open_snapshotter(backend, root) as sn:
        assert _image_loops(root) == first, "a second loop device was attached instead of reusing the mount"
        with mounted(sn.mounts("a"), work) as r:
            assert (r / "f").read_text() == "a"
    _assert_released(root)


def test_two_snapshotters_in_one_process(tmp_path):
    backend = BACKENDS[0] if BACKENDS else pytest.skip("no loop-file backend runs here")
    root = tmp_path / "store"
    one = open_snapshotter(backend, root)
    two = open_snapshotter(backend, root)
    try:
        one.close()
        two.prepare("x")                                   # still mounted for the second
        assert os.path.isdir(os.path.join(two.storage))
    finally:
        one.close()
        two.close()
    _assert_released(root)
