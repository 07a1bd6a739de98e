"""The `labkit run` fast path (docs/performance.md, "labkit run"): an ephemeral snapshot for a `--rm`
container (overlay mounts it volatile, as podman does), the store's one-row answer for a run, and a
console-script process that ends without the interpreter's teardown, but only when nothing is pending."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labkit import Lab
from labkit._sys.mounts import mountinfo
from labkit.snapshots import open_snapshotter
from labkit.snapshots.base import EPHEMERAL


def _super_options(target: str) -> str:
    return next(m.super_options for m in mountinfo() if m.target == target)


@pytest.mark.root
def test_ephemeral_overlay_snapshot_is_volatile_and_commits_durably(tmp_path, monkeypatch):
    sn = open_snapshotter("overlay", tmp_path / "sn")
    try:
        os.makedirs(tmp_path / "m")
        with sn.prepare("base-build").mount(str(tmp_path / "m")) as root:
            open(os.path.join(root, "base"), "w").write("b")
        sn.commit("base", "base-build")
        for key, labels in (("plain", {}), ("eph", {EPHEMERAL: "true", "x": "1"})):
            target = str(tmp_path / key)
            os.makedirs(target)
            with sn.prepare(key, "base", labels=labels).mount(target):
                assert ("volatile" in _super_options(target)) == (key == "eph")
                assert sn.mounts(key).targets() == [target]          # found again by its (volatile) mount
                open(os.path.join(target, "new"), "w").write("n")
        persisted = []
        real = type(sn)._persist
        monkeypatch.setattr(type(sn), "_persist", lambda self, row: persisted.append(row.name) or real(self, row))
        sn.commit("eph-img", "eph")
        sn.commit("plain-img", "plain")
        assert persisted == ["eph"]                                   # synced before it became an image
        info = sn.stat("eph-img")
        assert EPHEMERAL not in info.labels and info.labels["x"] == "1"
        state = sn.db.execute("SELECT state FROM snapshots WHERE name='eph-img'").fetchone()[0]
        assert "ephemeral" not in state
        target = str(tmp_path / "child")
        os.makedirs(target)
        with sn.prepare("child", "eph-img").mount(target):           # an ordinary parent: not volatile
            assert "volatile" not in _super_options(target)
            assert sorted(os.listdir(target)) == ["base", "new"]
        sn.remove("child")
    finally:
        sn.close()


@pytest.mark.root
def test_lab_run_rm_is_ephemeral_and_run_info_reads_one_row(tmp_path):
    with Lab(str(tmp_path / "lab"), "overlay", fork="direct") as lab:
        iid = lab.import_image("busybox", tag="busybox")
        image_id, snapshot, cfg = lab.store.run_info("busybox")
        info = lab.store.inspect("busybox")
        assert (image_id, snapshot, cfg) == (iid, info.snapshot, info.config)
        c = lab.run("busybox", ["sh", "-c", "grep -c volatile /proc/self/mountinfo"], rm=True)
        assert c.output.strip() == "1" and c.exit_code == 0
        kept = lab.run("busybox", ["sh", "-c", "grep -c volatile /proc/self/mountinfo"])
        assert kept.output.strip() == "0"
        assert EPHEMERAL not in lab.sn.stat(kept.key).labels
        kept.remove()


PROBE = """
import atexit, sys
from labkit import cli
if sys.argv[1] == "pending":
    atexit.register(lambda: print("atexit ran", flush=True))
print("out", end="")            # unflushed when stdout is a pipe
cli._exit_now(int(sys.argv[2]))
print(" returned")
"""


def test_console_script_ends_at_once_only_when_nothing_is_pending():
    r = subprocess.run([sys.executable, "-c", PROBE, "none", "7"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (7, "out")                    # flushed, then ended with the code
    r = subprocess.run([sys.executable, "-c", PROBE, "pending", "7"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "out returned\natexit ran\n")


@pytest.mark.root
def test_console_script_run_keeps_output_and_exit_code(tmp_path):
    cmd = [sys.executable, "-m", "labkit.cli", "--root", str(tmp_path / "lab"), "--backend", "overlay"]
    subprocess.run([*cmd, "image", "import", "busybox"], check=True, capture_output=True, timeout=120)
    r = subprocess.run([*cmd, "run", "--rm", "busybox", "sh", "-c", "echo hi; echo err >&2; exit 3"],
                       capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (3, "hi\nerr\n", "")    # one log, as the container wrote it
    r = subprocess.run([*cmd, "ps", "-a", "-q"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == ""                     # --rm left nothing


THREADS = """
import sys, threading, time
from labkit import cli
threading.Thread(target=time.sleep, args=(0.3,), daemon=sys.argv[1] == "daemon").start()
cli._exit_now(5)
print("returned", end="")
"""


def test_console_script_waits_for_threads_but_not_daemon_threads():
    r = subprocess.run([sys.executable, "-c", THREADS, "daemon"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (5, "")
    r = subprocess.run([sys.executable, "-c", THREADS, "worker"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "returned")


@pytest.mark.root
def test_run_waits_for_the_exit_status_its_shim_writes(tmp_path, capfd):
    """`sh -c 'exit 3'` ends before `labkit run` looks: PID 1 is gone while its shim may still be writing
    the status; the code is the container's every time, never a 0 read too early."""
    from labkit.cli import _main
    R = ["--root", str(tmp_path / "lab"), "--backend", "overlay"]
    assert _main([*R, "image", "import", "busybox"]) == 0
    codes = [_main([*R, "run", "--rm", "busybox", "sh", "-c", "exit 3"]) for _ in range(15)]
    assert codes == [3] * 15
