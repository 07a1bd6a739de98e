"""A process killed mid-way leaves mounts and a loop device; `labkit gc` releases them all."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from labkit._sys import loop, mounts
from labkit.gc import find_leftovers, gc

CHILD = textwrap.dedent("""
    import os, sys, time
    from labkit.snapshots import open_snapshotter
    root, target, backend = sys.argv[1:4]
    sn = open_snapshotter(backend, root, **({"loop_size": "512M"} if backend != "overlay" else {}))
    m = sn.prepare("a")
    with m.mount(target):
        open(os.path.join(target, "f"), "w").write("x")
    sn.commit("base", "a")
    sn.prepare("c1", "base").mount(target)
    print("ready", flush=True)
    time.sleep(60)
""")


@pytest.mark.root
@pytest.mark.parametrize("backend", ["btrfs", "overlay"])
def test_gc_cleans_up_after_a_killed_process(tmp_path, backend):
    root = str(tmp_path / "store")
    target = str(tmp_path / "rootfs")  # outside the store: found through the mount's origin
    os.mkdir(target)
    p = subprocess.Popen([sys.executable, "-c", CHILD, root, target, backend], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    left = find_leftovers(root)
    assert any(x.kind == "mount" and x.name == target for x in left), left
    if backend == "btrfs":
        assert any(x.kind == "loop" or x.name.endswith("/mnt") for x in left)
    released = gc(root)
    assert released
    assert find_leftovers(root) == []
    assert not mounts.mounts_under(str(tmp_path))
    assert not [lp for lp in loop.list_loops() if lp.backing_file.startswith(str(tmp_path))]


def test_gc_of_an_unknown_root_is_empty(tmp_path):
    assert gc(str(tmp_path / "nothing")) == []


@pytest.mark.parametrize("root", ["/", "/etc", "/var/lib", "/tmp"])
def test_gc_refuses_system_directories(root):
    from labkit import errors
    with pytest.raises(errors.InvalidArgument, match="system directory"):
        gc(root)


def test_gc_refuses_a_directory_that_is_no_store(tmp_path):
    from labkit import errors
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".bashrc").write_text("")
    with pytest.raises(errors.InvalidArgument, match="no labkit store"):
        gc(str(tmp_path / "home"))


def test_overlay_layers_match_exactly():
    """/var/lib/labkit2's overlay is not /var/lib/labkit's (a substring match once said it was)."""
    from labkit._sys.leftovers import inside
    from labkit.gc import _overlay_dirs
    dirs = _overlay_dirs("rw,lowerdir=/var/lib/labkit2/a:/var/lib/labkit2/b,upperdir=/var/lib/labkit2/u,workdir=/w")
    assert dirs == ["/var/lib/labkit2/a", "/var/lib/labkit2/b", "/var/lib/labkit2/u", "/w"]
    assert not any(inside(d, "/var/lib/labkit") for d in dirs)


@pytest.mark.root
def test_gc_keeps_a_mount_in_use_unless_forced(tmp_path):
    root = tmp_path / "store"
    (root / "rootfs" / "c1").mkdir(parents=True)
    (root / ".labkit-store").write_text("")
    target = str(root / "rootfs" / "c1")
    mounts.mount("tmpfs", target, "tmpfs", 0, "size=1m")
    user = subprocess.Popen(["sleep", "60"], cwd=target)
    try:
        out = gc(str(root))
        assert any("kept, in use by pid" in line for line in out), out
        assert mounts.mounts_under(str(root))
    finally:
        user.kill()
        user.wait()
    out = gc(str(root))
    assert any(line.startswith("mount " + target) for line in out), out
    assert not mounts.mounts_under(str(root))
