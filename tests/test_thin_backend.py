"""The thin backend end to end: FUSE daemon, loop devices, ext4, pool exhaustion, gc after a crash."""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from labkit._sys import loop, mounts
from labkit.errors import FailedPrecondition
from labkit.gc import find_leftovers, gc
from labkit.snapshots import open_snapshotter
from labkit.snapshots.mount import Mount
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
        used0 = sn.pool_status().used_data_blocks
        for i in range(5):
            sn.prepare(f"c{i}", "img")
        assert sn.pool_status().used_data_blocks == used0  # five snapshots, not a block more
        with sn.prepare("w", "img").mount(target):
            (target / "new").write_bytes(os.urandom(1 << 20))
        assert sn.usage("w").size >= 1 << 20
        assert sn.usage("img").size == 0  # every block of the image is shared with its containers
        for i in range(5):
            sn.remove(f"c{i}")
        sn.remove("w")
        assert sn.usage("img").size >= 4 << 20  # now it alone holds them
        assert sn.pool_status().used_data_blocks <= used0
        assert sn.pool_check().ok


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
        assert sn.pool_check().ok


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


def _daemon_pid(sn) -> int:
    return sn.client.daemon_info().pid


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.02)
    return False


def test_close_never_waits_for_a_busy_daemon(tmp_path):
    """A container left mounted (``labkit run`` without --rm): close() returns at once, the daemon stays
    for the mount, a second snapshotter sees the snapshot and removes it after the unmount."""
    root, target = tmp_path / "s", tmp_path / "t"
    target.mkdir()
    sn = open_snapshotter("thin", root, data_size="512M", base_size="128M")
    mounted = sn.prepare("c").mount(target)
    try:
        (target / "f").write_text("still here")
        pid = _daemon_pid(sn)
        t0 = time.monotonic()
        sn.close()
        assert time.monotonic() - t0 < 2.0, "close() waited for a daemon that serves a mounted device"
        assert os.path.exists(f"/proc/{pid}") and (target / "f").read_text() == "still here"
        sn2 = open_snapshotter("thin", root, data_size="512M", base_size="128M")
        try:
            assert _daemon_pid(sn2) == pid and [i.name for i in sn2.walk()] == ["c"]
            with pytest.raises(FailedPrecondition):
                sn2.remove("c")          # still mounted
            mounted.unmount()
            sn2.remove("c")
            assert list(sn2.walk()) == []
        finally:
            sn2.close()
    finally:
        mounted.unmount()
    assert _wait_gone(pid), "the daemon did not stop once idle"
    assert not mounts.mounts_under(str(tmp_path))
    assert not [lp for lp in loop.list_loops() if lp.backing_file.startswith(str(tmp_path))]


WORKER = textwrap.dedent("""
    import os, sys
    from labkit.snapshots import open_snapshotter
    root, work, tag = sys.argv[1:4]
    sn = open_snapshotter("thin", root, data_size="1G", base_size="128M")
    target = os.path.join(work, tag)
    os.makedirs(target)
    try:
        for i in range(10):
            key = f"{tag}-{i}"
            with sn.prepare(key, "base").mount(target):
                with open(os.path.join(target, key), "wb") as f:
                    f.write(os.urandom(256 << 10))
                assert sorted(os.listdir(target)) == sorted(["base-file", "lost+found", key]) or \\
                    sorted(os.listdir(target)) == sorted(["base-file", key])
            if i % 2:
                sn.commit(f"{tag}-img{i}", key)
            else:
                sn.remove(key)
    finally:
        sn.close()
    print("done", flush=True)
""")


@pytest.mark.slow
def test_two_processes_share_one_store(tmp_path):
    """Two CLIs (or a CLI beside a notebook) on one thin store at once: one daemon, no failure."""
    root, work = tmp_path / "s", tmp_path / "w"
    work.mkdir()
    with open_snapshotter("thin", root, data_size="1G", base_size="128M") as sn:
        with sn.prepare("b").mount(work):
            (work / "base-file").write_text("base")
        sn.commit("base", "b")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(work), tag], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for tag in ("p", "q")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "done", err[-3000:]
    with open_snapshotter("thin", root, data_size="1G", base_size="128M") as sn:
        names = {i.name for i in sn.walk()}
        assert names == {"base"} | {f"{t}-img{i}" for t in "pq" for i in (1, 3, 5, 7, 9)}
        assert sn.pool_check().ok
        with sn.view("look", "q-img9").mount(work / "q"):
            assert (work / "q" / "q-9").stat().st_size == 256 << 10
        sn.remove("look")
    assert not mounts.mounts_under(str(tmp_path))


def test_orphan_device_of_a_crashed_prepare_is_recovered(tmp_path, caplog):
    """A process died after create_snap and before its metadata row committed: the row id comes back, and
    prepare must not fail with AlreadyExists forever."""
    target = tmp_path / "t"
    target.mkdir()
    with open_snapshotter("thin", tmp_path / "s", data_size="512M", base_size="128M") as sn:
        with sn.prepare("a").mount(target):
            (target / "from-image").write_text("image")
        sn.commit("img", "a")
        seq = sn.db.execute("SELECT seq FROM sqlite_sequence WHERE name='snapshots'").fetchone()[0]
        orphan = seq + 1
        sn.client.create_snap(orphan, 0)           # what the crashed process left: a device, no row
        with caplog.at_level(logging.WARNING, logger="labkit.snapshots.thin"):
            with sn.prepare("c", "img").mount(target):
                assert (target / "from-image").read_text() == "image"   # the new snapshot, not the orphan
        assert "belongs to no snapshot" in caplog.text
        assert orphan in sn.client.devices()  # now the device of "c"
        # an orphan still mounted is left alone: prepare says so
        seq = sn.db.execute("SELECT seq FROM sqlite_sequence WHERE name='snapshots'").fetchone()[0]
        sn.client.create_snap(seq + 1, 0)
        with Mount("ext4", sn.client.attach(seq + 1)).mount(target):
            with pytest.raises(FailedPrecondition, match="orphan"):
                sn.prepare("d", "img")
        sn.prepare("d", "img")
        assert sn.pool_check().ok


def _super_options(target) -> str:
    return next(m.super_options for m in mounts.mountinfo() if m.target == str(target))


def test_ephemeral_snapshot_mounts_nobarrier_and_commits_durably(tmp_path, monkeypatch):
    """A `run --rm` container's snapshot (base.EPHEMERAL) is mounted `nobarrier`: ext4 sends no flush, so
    neither its journal nor its unmount commits the pool (docs/performance.md); committing one anyway
    syncs its mount first (_persist), and the image has every byte."""
    from labkit.snapshots.base import EPHEMERAL
    target = tmp_path / "t"
    target.mkdir()
    with open_snapshotter("thin", tmp_path / "s", data_size="512M", base_size="128M") as sn:
        for key, labels in (("plain", {}), ("eph", {EPHEMERAL: "true"})):
            with sn.prepare(key, labels=labels).mount(target):
                assert ("nobarrier" in _super_options(target)) == (key == "eph")
        synced = []
        real = type(sn)._persist
        monkeypatch.setattr(type(sn), "_persist", lambda self, row: synced.append(row.name) or real(self, row))
        mounted = sn.prepare("eph2", labels={EPHEMERAL: "true"}).mount(target)
        (target / "data").write_bytes(b"x" * (3 << 20))
        sn._persist(sn._get("eph2"))                      # what commit does while it is still mounted
        mounted.unmount()
        sn.commit("img", "eph2")
        assert synced == ["eph2", "eph2"]
        with sn.prepare("child", "img").mount(target):
            assert "nobarrier" not in _super_options(target)
            assert (target / "data").read_bytes() == b"x" * (3 << 20)
        for key in ("plain", "eph", "child"):
            sn.remove(key)
        assert sn.pool_check().ok
    assert not mounts.mounts_under(str(tmp_path))


@pytest.mark.one_thread      # prestart forks the daemon: it needs a process with one thread (tests/conftest.py)
def test_prestart_is_taken_over_or_dropped(tmp_path):
    """The Prestarting ability: prestart() forks the daemon and returns at once; this process's next open
    of the store takes it over (no second daemon); one nobody took is stopped by drop_prestart(); no
    prestart without a pool, beside a running daemon, or in a process with threads."""
    import threading

    from labkit.snapshots import backend_class
    from labkit.snapshots.capabilities import Prestarting
    from labkit.thin import client as tc
    from labkit.thin.gc import pool_daemons
    assert isinstance(ThinSnapshotter, Prestarting) and not isinstance(backend_class("overlay"), Prestarting)
    store = str(tmp_path / "s")
    pool = tc.store_paths(store)[0]
    assert not ThinSnapshotter.prestart(store)                             # no pool yet
    open_snapshotter("thin", store, data_size="512M", base_size="128M").close()
    assert ThinSnapshotter.prestart(store) and not ThinSnapshotter.prestart(store)
    pid = tc._PENDING[pool].pid
    with open_snapshotter("thin", store) as sn:
        assert sn.client.daemon_info().pid == pid and not tc._PENDING
        assert not ThinSnapshotter.prestart(store)                         # a daemon serves
    ThinSnapshotter.drop_prestart(store)                                   # nothing pending: nothing to do
    assert _wait_gone(pid)
    assert ThinSnapshotter.prestart(store)
    pid = tc._PENDING[pool].pid
    ThinSnapshotter.drop_prestart(store)
    assert _wait_gone(pid) and not tc._PENDING and not pool_daemons(str(tmp_path), False)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not ThinSnapshotter.prestart(store)                         # forking needs one thread
    finally:
        stop.set()
        t.join()
    assert not mounts.mounts_under(str(tmp_path))


_OPEN_AND_SAY = """
import sys
from labkit.snapshots import open_snapshotter
print("opening", flush=True)
with open_snapshotter("thin", sys.argv[1]) as sn:
    sn.client.devices()
print("opened", flush=True)
"""


def test_an_opener_never_holds_the_store_lock_while_it_waits_for_a_starter(tmp_path):
    """Lock order. A CLI that prestarted the daemon holds the pool's start lock until it opens the store,
    which takes the store's ``thin.lock``. A second process opening the store meanwhile used to take
    ``thin.lock`` first and then wait for the start lock: each waited for the other until the start
    timeout (20 s), and the second failed with "is being started by another process that does not
    finish" (seen in the two-process loop). Here this test is the prestarting CLI: it holds the start
    lock, lets a second process begin to open the store, and must then get ``thin.lock`` at once."""
    import fcntl

    from labkit.thin import client as tc
    from labkit.thin import wire
    store = str(tmp_path / "s")
    open_snapshotter("thin", store, data_size="512M", base_size="128M").close()
    pool = tc.store_paths(store)[0]
    ctl = wire.open_ctl_dir(pool, create=True)
    start = os.open(wire.START_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=ctl)
    os.close(ctl)
    fcntl.flock(start, fcntl.LOCK_EX)                      # as prestart() holds it (no daemon runs yet)
    other = subprocess.Popen([sys.executable, "-c", _OPEN_AND_SAY, store], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "opening"
        time.sleep(1.0)                                    # it reaches the locks
        store_lock = os.open(os.path.join(store, "thin.lock"), os.O_RDWR | os.O_CLOEXEC)
        try:
            got = False
            for _ in range(40):                            # 2 s: it is free at once when the order is right
                try:
                    fcntl.flock(store_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    got = True
                    break
                except BlockingIOError:
                    time.sleep(0.05)
            assert got, "the second opener holds thin.lock while it waits for the start lock"
        finally:
            os.close(store_lock)
        os.close(start)                                    # as the prestarting CLI takes its daemon over
        start = -1
        out, err = other.communicate(timeout=60)
        assert other.returncode == 0 and out.strip() == "opened", err
    finally:
        if start >= 0:
            os.close(start)
        if other.poll() is None:
            other.kill()
            other.wait()
    deadline = time.monotonic() + 10
    while mounts.mounts_under(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)                                   # the daemon stops once idle
    assert not mounts.mounts_under(str(tmp_path))


def test_cli_on_thin_leaves_no_daemon_even_when_the_verb_fails(tmp_path):
    """`labkit --backend thin` prestarts the daemon while it imports; whether the verb succeeds or fails
    before it opens the store, no daemon and no mount are left when the command ends."""
    from labkit.thin.gc import pool_daemons
    cmd = [sys.executable, "-m", "labkit.cli", "--root", str(tmp_path / "lab"), "--backend", "thin"]
    subprocess.run([*cmd, "image", "import", "busybox"], check=True, capture_output=True, timeout=120)
    for argv, code in ((["run", "--rm", "busybox", "sh", "-c", "exit 3"], 3), (["run", "--rm", "-t", "busybox"], 125),
                       (["run", "--rm", "no-such-image"], 125), (["images", "-q"], 0)):
        r = subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == code, (argv, r.stderr)
        assert pool_daemons(str(tmp_path), False) == [], argv
        assert not mounts.mounts_under(str(tmp_path)), argv
    log = (tmp_path / "lab" / "snapshots" / "thin" / "pool" / "daemon.log").read_text()
    assert "Traceback" not in log


def test_cached_folio_sizes_counts_only_cached_pages(tmp_path):
    from labkit.experiments.thin_io import cached_folio_sizes
    f = tmp_path / "f"
    f.write_bytes(os.urandom(8 << 20))
    sizes = cached_folio_sizes(str(f))
    assert sizes and all(s % 4096 == 0 and s & (s - 1) == 0 for s in sizes)     # powers of two, whole pages
    assert sum(sizes.values()) <= (8 << 20) // 4096
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert sum(cached_folio_sizes(str(f)).values()) < sum(sizes.values())      # nothing was read back in


def test_loop_device_of_a_thin_mount_reads_the_export_page_cache(tmp_path):
    """What thin-io's ``backing_folio_kib`` looks at: the FUSE device file behind the mount's loop device."""
    from labkit.experiments.thin_io import _folio_kib, _loop_backing, cached_folio_sizes
    target = tmp_path / "t"
    target.mkdir()
    with open_snapshotter("thin", tmp_path / "s", data_size="1G", base_size="256M") as sn:
        with sn.prepare("a").mount(target):
            (target / "data").write_bytes(os.urandom(4 << 20))
            os.sync()
            backing = _loop_backing(str(target))
            assert backing and backing.startswith(str(tmp_path / "s"))   # the pool's device file, not a plain file
            sizes = cached_folio_sizes(backing)
            assert sum(sizes.values()) * 4096 >= 4 << 20                  # the data written is in its cache
            assert _folio_kib(backing) >= 4
        sn.remove("a")
