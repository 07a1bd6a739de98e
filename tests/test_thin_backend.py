"""The thin backend end to end: FUSE daemon, loop devices, ext4, pool exhaustion, gc after a crash."""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from labkit._sys import loop, mounts
from labkit.gc import find_leftovers, gc
from labkit.snapshots import open_snapshotter
from labkit.snapshots.thin import ThinSnapshotter

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(ThinSnapshotter.supported("/tmp") is not None,
                                 reason=str(ThinSnapshotter.supported("/tmp")))]


def _digest(path):
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_snapshot_costs_no_space_and_remove_frees_it(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    with open_snapshotter("thin", tmp_path / "s", data_size="1G", base_size="256M") as sn:
        with sn.prepare("a").mount(target):
            (target / "data").write_bytes(os.urandom(4 << 20))
        sn.commit("img", "a")
        used0 = sn.client.call("status")["used_data_blocks"]
        for i in range(5):
            sn.prepare(f"c{i}", "img")
        assert sn.client.call("status")["used_data_blocks"] == used0  # five snapshots, not a block more
        with sn.prepare("w", "img").mount(target):
            (target / "new").write_bytes(os.urandom(1 << 20))
        assert sn.usage("w").size >= 1 << 20
        assert sn.usage("img").size == 0  # every block of the image is shared with its containers
        for i in range(5):
            sn.remove(f"c{i}")
        sn.remove("w")
        assert sn.usage("img").size >= 4 << 20  # now it alone holds them
        assert sn.client.call("status")["used_data_blocks"] <= used0
        assert sn.client.call("check")["ok"]


def test_pool_full_fails_the_write_and_keeps_the_image(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    with open_snapshotter("thin", tmp_path / "s", data_size="96M", base_size="1G") as sn:
        with sn.prepare("a").mount(target):
            (target / "keep").write_bytes(os.urandom(8 << 20))
        sn.commit("img", "a")
        with sn.view("v0", "img").mount(target):
            before = _digest(target)
        sn.remove("v0")
        with sn.prepare("c", "img").mount(target):
            with pytest.raises(OSError) as e:
                with open(target / "fill", "wb") as f:
                    for _ in range(200):
                        f.write(os.urandom(1 << 20))
                        os.fsync(f.fileno())
            assert e.value.errno in (errno.EIO, errno.ENOSPC, errno.EROFS)
        sn.remove("c")
        with sn.view("v", "img").mount(target):
            assert _digest(target) == before
        sn.remove("v")
        # space came back: a new container can write again
        with sn.prepare("d", "img").mount(target):
            (target / "again").write_bytes(b"x" * (1 << 20))
        assert sn.client.call("check")["ok"]


CHILD = textwrap.dedent("""
    import sys, time
    from labkit.snapshots import open_snapshotter
    root, target = sys.argv[1:3]
    sn = open_snapshotter("thin", root, data_size="512M", base_size="128M", idle=-1)
    sn.prepare("c1").mount(target)
    print("ready", flush=True)
    time.sleep(60)
""")


def test_gc_after_a_killed_process_and_daemon(tmp_path):
    root, target = str(tmp_path / "s"), str(tmp_path / "t")
    os.mkdir(target)
    p = subprocess.Popen([sys.executable, "-c", CHILD, root, target], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
    finally:
        p.kill()
        p.wait()
    left = find_leftovers(root)
    kinds = {x.kind for x in left}
    assert {"mount", "process"} <= kinds, left
    # the daemon dies too (as after a host crash): gc must still release everything
    for x in left:
        if x.kind == "process":
            os.kill(int(x.name), signal.SIGKILL)
    assert gc(root)
    assert find_leftovers(root) == []
    assert not mounts.mounts_under(str(tmp_path))
    assert not [lp for lp in loop.list_loops() if lp.backing_file.startswith(str(tmp_path))]
