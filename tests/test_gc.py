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
