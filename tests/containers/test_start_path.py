"""The start path's shortcuts: containers forked by the caller itself (``fork="direct"``, what a one-shot
CLI uses), the seccomp filter kept on disk per capability set, and the helper that starts early and
stops at once."""
from __future__ import annotations

import os
import stat
import time

import pytest

from labkit import errors
from labkit.containers import runtime as rtmod
from labkit.containers.runtime import Runtime

pytestmark = pytest.mark.root


@pytest.fixture
def direct(tmp_path, leftovers):
    rt = Runtime(str(tmp_path / "containers"), fork="direct")
    yield rt
    for c in rt.list():
        c.remove(force=True)
    rt.close()
    assert leftovers() == []


def test_direct_fork_runs_execs_and_leaks_no_descriptor(direct, rootfs, tmp_path):
    held = os.open(tmp_path / "secret", os.O_WRONLY | os.O_CREAT)      # inheritable, like a careless caller's
    try:
        os.set_inheritable(held, True)
        c = direct.run(rootfs, ["sh", "-c", "ls /proc/self/fd; echo $$"])
        assert c.exit_code == 0
        fds = c.logs().split()
        assert fds[-1] == "1" and sorted(fds[:-1]) == ["0", "1", "2", "3"]   # 3: ls's own directory fd
        assert c.state.shim != os.getpid() and direct._spawner.pid == os.getpid()
        c.remove()
        d = direct.run(rootfs, ["sleep", "30"], detach=True)
        assert d.exec(["hostname"]) == (0, f"{d.name}\n")
        shim = d.state.shim
        with open(f"/proc/{shim}/status") as f:
            assert f"PPid:\t{os.getpid()}\n" in f.read()               # forked here, not by a helper
        fds = os.listdir(f"/proc/{shim}/fd")
        assert str(tmp_path / "secret") not in {os.readlink(f"/proc/{shim}/fd/{x}") for x in fds}
        assert d.stop(timeout=0.5) == 137
        d.remove()
    finally:
        os.close(held)


def test_direct_fork_reports_a_missing_command(direct, rootfs):
    with pytest.raises(errors.InvalidArgument, match="cannot exec the command"):
        direct.run(rootfs, ["/no/such/thing"])
    assert direct.list() == []


def test_fork_must_be_known(tmp_path):
    with pytest.raises(errors.InvalidArgument, match="fork"):
        Runtime(str(tmp_path / "c"), fork="vfork")


def test_seccomp_filter_is_kept_per_capability_set(rt, rootfs, monkeypatch):
    caps = frozenset({"CAP_CHOWN", "CAP_KILL"})
    rtmod._FILTERS.pop(caps, None)
    path = os.path.join(rtmod.SECCOMP_CACHE, rtmod._filter_key(caps) + ".bpf")
    if os.path.exists(path):
        os.unlink(path)
    compiled = []
    real = rtmod.seccomp.compile_bpf
    monkeypatch.setattr(rtmod.seccomp, "compile_bpf", lambda c: compiled.append(c) or real(c))
    bpf = rtmod._seccomp_filter(caps)
    st = os.stat(path)
    assert compiled == [caps] and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert stat.S_IMODE(os.stat(rtmod.SECCOMP_CACHE).st_mode) == 0o700
    rtmod._FILTERS.pop(caps)
    assert rtmod._seccomp_filter(caps) == bpf and compiled == [caps]     # read back, not compiled
    rtmod._FILTERS.pop(caps)
    os.chmod(path, 0o622)                                                # writable by others: not trusted
    assert rtmod._seccomp_filter(caps) == bpf and compiled == [caps, caps]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600                   # and replaced
    rtmod._FILTERS.pop(caps)
    with open(path, "ab") as f:
        f.write(b"xyz")                                                  # not whole instructions
    assert rtmod._seccomp_filter(caps) == bpf and len(compiled) == 3
    # a container of that set still gets the filter: EPERM for what it may not call
    c = rt.run(rootfs, ["sh", "-c", "grep Seccomp: /proc/self/status"], cap_drop=["ALL"], cap_add=["CHOWN", "KILL"])
    assert c.exit_code == 0 and "Seccomp:\t2" in c.logs()


def test_helper_starts_early_and_stops_at_once(tmp_path):
    rt = Runtime(str(tmp_path / "c"))
    rt.prestart()
    pid = rt._spawner.pid
    assert pid is not None
    t = time.monotonic()
    rt.close()
    assert time.monotonic() - t < 1.0
    assert not os.path.exists(f"/proc/{pid}")                            # exited and reaped
