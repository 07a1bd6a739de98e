"""Runs IN THE VM, in the same guest pytest process as the dmthin conformance suite (see
test_dmthin_conformance.py, which names this file; pytest never collects it by itself: the name does not
start with ``test_``): :mod:`labkit._sys.dm` against the kernel's device-mapper, and the dmthin backend's
leftovers after a "crash" released by ``labkit gc``. Skipped where there is no device-mapper.
"""
from __future__ import annotations

import errno
import os
import stat

import pytest

from labkit import gc
from labkit._sys import dm, loop
from labkit._sys import mounts as sysmounts
from labkit.snapshots import open_snapshotter

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not dm.available(),
                                reason="needs root and device-mapper (runs in labkit's VM)")


def test_dm_linear_device_lifecycle(tmp_path) -> None:
    backing = tmp_path / "backing"
    with open(backing, "wb") as f:
        f.write(b"labkit")
        f.truncate(4 << 20)
    lp = loop.attach(str(backing), name="lkdm-test")
    name = f"lkdm-test-{os.getpid()}"
    try:
        path = dm.create(name, "linear", 0, 8192, f"{lp} 0")
        assert path == dm.node(name) and stat.S_ISBLK(os.stat(path).st_mode)
        assert dm.exists(name) and name in dm.list_devices()
        assert dm.list_devices()[name] == os.stat(path).st_rdev
        assert dm.status(name).startswith("0 8192 linear")
        dm.suspend(name)
        dm.resume(name)
        with open(path, "rb") as f:
            assert f.read(6) == b"labkit"
        with pytest.raises(OSError) as e:   # a taken name: EBUSY (dm_hash_insert), not EEXIST
            dm.create(name, "linear", 0, 8, f"{lp} 0")
        assert e.value.errno == errno.EBUSY and dm.status(name).startswith("0 8192 linear")
        with pytest.raises(OSError):   # a table the target refuses leaves no device behind
            dm.create(name + "-bad", "linear", 0, 8, "/nonexistent 0")
        assert not dm.exists(name + "-bad")
        dm.remove(name)
        assert not dm.exists(name) and name not in dm.list_devices() and not os.path.lexists(path)
        with pytest.raises(OSError) as e:
            dm.remove(name)
        assert e.value.errno == errno.ENXIO
    finally:
        for n in (name, name + "-bad"):
            if dm.exists(n):
                dm.remove(n)
        loop.detach(lp)
    targets = dm.targets()
    assert {"linear", "thin-pool", "thin"} <= set(targets) and targets["thin-pool"].count(".") == 2


def test_dmthin_leftovers_of_a_crashed_process_go_with_gc(tmp_path) -> None:
    """A store dropped without close() (its process died) with a snapshot mounted: ``labkit gc`` of the store
    releases the mount, the thin devices, the pool and its loop devices; the store reopens whole."""
    root = tmp_path / "store"
    sn = open_snapshotter("dmthin", root, data_size="1G", base_size="256M")
    target = tmp_path / "mnt"
    target.mkdir()
    sn.prepare("c1").mount(target)
    (target / "kept").write_bytes(b"written before the crash")
    tag = sn.tag
    mine = [n for n in dm.list_devices() if n.startswith(f"labkit-{tag}-")]
    assert sorted(mine) == [f"labkit-{tag}-1", f"labkit-{tag}-pool"], mine
    sn._db.close()            # the process "dies": nothing of the backend's own cleanup runs
    sn._db = None
    released = gc.gc(str(root))
    assert any(r.startswith("dm ") for r in released), released
    assert not [n for n in dm.list_devices() if n.startswith(f"labkit-{tag}-")]
    assert not [lp for lp in loop.list_loops() if lp.name == f"labkit-dmthin-{tag}"]
    assert not [m for m in sysmounts.mountinfo() if m.target == str(target)]
    sn2 = open_snapshotter("dmthin", root, data_size="1G", base_size="256M")
    try:
        with sn2.mounts("c1").mount(target):
            assert (target / "kept").read_bytes() == b"written before the crash"
        sn2.commit("c1-c", "c1")
        assert [i.name for i in sn2.walk()] == ["c1-c"]
    finally:
        sn2.close()
    assert not [n for n in dm.list_devices() if n.startswith(f"labkit-{tag}-")]
