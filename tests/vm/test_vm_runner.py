"""labkit.vm's runner without booting anything: missing pieces, a fake ``vng`` for output streaming,
exit status, timeouts and hangs — and that no process of the VM's group survives any of them."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from labkit import errors
from labkit.vm import runner
from labkit.vm.cli import register
from labkit.vm.guest import main as guest_main
from labkit.vm.kernelpool import parse_thin_ls
from labkit.vm.runner import VM, Requirements


def _fake_vng(tmp_path, body: str) -> str:
    """A stand-in for vng: finds --rwdir SCRATCH, then runs ``body`` (sh) with $SCRATCH set."""
    path = tmp_path / "vng"
    path.write_text("#!/bin/bash\n" + textwrap.dedent("""
        while [ $# -gt 0 ]; do [ "$1" = --rwdir ] && { SCRATCH=$2; break; }; shift; done
        """) + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    def install(body: str) -> None:
        vng = _fake_vng(tmp_path, body)
        monkeypatch.setattr(runner, "requirements", lambda kernel=None: Requirements("/bin/true", "/boot/x", vng, ()))
    return install


def _group_gone(marker: str) -> bool:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return marker not in out


def _pids_of(marker: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if marker in line]


def test_missing_pieces_name_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(runner.shutil, "which", lambda name: None)
    monkeypatch.setattr(runner, "_find_vng", lambda: None)
    req = runner.requirements("/nonexistent/vmlinuz")
    text = "\n".join(req.missing)
    assert not req.ok
    assert "apt-get install qemu-system-x86" in text
    assert "apt-get install linux-image-amd64" in text
    assert "pip install virtme-ng" in text
    with pytest.raises(errors.Unsupported, match="apt-get install qemu-system-x86"):
        VM(kernel="/nonexistent/vmlinuz").run("true")


def test_bad_options_are_refused() -> None:
    with pytest.raises(errors.InvalidArgument):
        VM(accel="xen")
    with pytest.raises(errors.InvalidArgument):
        VM(memory="lots")


def test_output_streams_and_the_status_comes_back(fake, tmp_path) -> None:
    fake("""
        echo "labkit-vm: guest up 6.1-fake"
        echo line one; echo line two >&2
        echo 3 > "$SCRATCH/.labkit-vm/rc"
        """)
    seen = []
    scratch = tmp_path / "s"
    scratch.mkdir()
    res = VM().run(["echo", "hi there"], scratch=str(scratch), on_output=seen.append)
    assert res.returncode == 3
    assert seen[1:] == ["line one", "line two"]
    assert res.boot_seconds is not None and res.boot_seconds < res.seconds
    script = (scratch / ".labkit-vm" / "run.sh").read_text()
    assert "echo 'hi there'" in script and "modprobe -q loop" in script and "sysrq-trigger" in script


def test_timeout_kills_the_whole_group(fake, tmp_path) -> None:
    tag = f"labkit-vm-test-sleeper-{os.getpid()}"
    fake(f"""
        echo "labkit-vm: guest up"
        sh -c 'exec -a {tag} sleep 600' &
        exec -a {tag}-2 sleep 600
        """)
    t0 = time.monotonic()
    with pytest.raises(errors.FailedPrecondition, match="did not finish within 2 s"):
        VM(timeout=2).run("true", scratch=str(tmp_path), on_output=lambda s: None)
    assert time.monotonic() - t0 < 30
    assert _group_gone(tag), "a process of the VM's group survived the timeout"


_KILLED_PARENT = """
import sys
from labkit.vm import runner
from labkit.vm.runner import VM, Requirements
runner.requirements = lambda kernel=None: Requirements("/bin/true", "/boot/x", sys.argv[1], ())
VM(timeout=600).run("true", scratch=sys.argv[2], on_output=lambda s: print(s, flush=True))
"""


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_killed_parent_leaves_no_vm_behind(tmp_path, sig: str) -> None:
    """pytest (or a notebook) killed while its VM runs: qemu, a grandchild of vng, must go with it."""
    import signal
    tag = f"labkit-vm-test-orphan-{sig}-{os.getpid()}"
    vng = _fake_vng(tmp_path, f"""
        echo "labkit-vm: guest up"
        bash -c '(exec -a {tag} sleep 600) & wait'    # like vng -> sh -> virtme-run -> qemu
        """)
    scratch = tmp_path / "s"
    scratch.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", _KILLED_PARENT, vng, str(scratch)], stdout=subprocess.PIPE,
                              text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert parent.stdout is not None and "guest up" in parent.stdout.readline()
        deadline = time.monotonic() + 10
        while _group_gone(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _group_gone(tag), "the fake qemu never started"
        parent.send_signal(getattr(signal, sig))
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not _group_gone(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _group_gone(tag), f"the VM's qemu outlived its parent killed with {sig}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in _pids_of(tag):   # this test's own processes only, should any be left
            os.kill(pid, signal.SIGKILL)


_FORKING_PARENT = """
import os, sys, threading, time
from labkit.vm import runner
from labkit.vm.runner import VM, Requirements
runner.requirements = lambda kernel=None: Requirements("/bin/true", "/boot/x", sys.argv[1], ())
threading.Thread(target=lambda: VM(timeout=600).run("true", scratch=sys.argv[2], on_output=lambda s: None),
                 daemon=True).start()
while not runner._LIVE:
    time.sleep(0.02)
pid = os.fork()
if pid == 0:
    sys.exit(0)            # an ordinary end: the interpreter runs the atexit callbacks it inherited
os.waitpid(pid, 0)
print("child ended", flush=True)
time.sleep(600)
"""


def test_a_forked_child_ending_leaves_its_parents_vm_running(tmp_path) -> None:
    """A process that runs a VM (the test suite boots one in a thread beside the host tests) and forks:
    the child inherits the runner's table of VMs and its atexit callback, and must not kill them."""
    import signal
    tag = f"labkit-vm-test-forked-{os.getpid()}"
    vng = _fake_vng(tmp_path, f"""
        echo "labkit-vm: guest up"
        exec -a {tag} sleep 600
        """)
    scratch = tmp_path / "s"
    scratch.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", _FORKING_PARENT, vng, str(scratch)], stdout=subprocess.PIPE,
                              text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "child ended"
        time.sleep(0.2)
        assert not _group_gone(tag), "the child's exit killed its parent's VM"
    finally:
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while not _group_gone(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in _pids_of(tag):
            os.kill(pid, signal.SIGKILL)


def test_a_hang_before_the_guest_is_up_is_detected(fake, tmp_path) -> None:
    tag = f"labkit-vm-test-hang-{os.getpid()}"
    fake(f"exec -a {tag} sleep 600\n")
    with pytest.raises(errors.FailedPrecondition, match="did not come up within 2 s"):
        VM(accel="kvm", boot_timeout=2).run("true", scratch=str(tmp_path), on_output=lambda s: None)
    assert _group_gone(tag)


def test_an_exception_in_the_reader_kills_the_group(fake, tmp_path) -> None:
    tag = f"labkit-vm-test-exc-{os.getpid()}"
    fake(f"""
        echo "labkit-vm: guest up"
        exec -a {tag} sleep 600
        """)

    def explode(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        VM().run("true", scratch=str(tmp_path), on_output=explode)
    assert _group_gone(tag)


def test_a_vm_that_never_came_up_says_so(fake, tmp_path) -> None:
    fake("echo 'qemu: could not load kernel'; exit 1\n")
    with pytest.raises(errors.FailedPrecondition, match="could not load kernel"):
        VM().run("true", scratch=str(tmp_path), on_output=lambda s: None)


def test_cli_parses_and_reports_missing_pieces(tmp_path, capsys) -> None:
    import argparse
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    a = p.parse_args(["vm", "run", "--memory", "3G", "--", "pytest", "-k", "x"])
    assert (a.vm_command, a.cmd[-3:], a.memory) == ("run", ["pytest", "-k", "x"], "3G")
    a = p.parse_args(["vm", "check", "--kernel", str(tmp_path / "no-vmlinuz")])
    assert a.func(a) == 1
    assert "apt-get install linux-image-amd64" in capsys.readouterr().out


def test_guest_runner_reports_each_job(tmp_path, capsys) -> None:
    import json
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps({"results": str(tmp_path / "r"), "jobs": [
        {"name": "bad", "job": "no-such-job"}, {"name": "also", "job": "kernel_info"}]}))
    guest_main([str(spec)])
    bad = json.loads((tmp_path / "r" / "bad.json").read_text())
    assert not bad["ok"] and "unknown job" in bad["error"]
    assert (tmp_path / "r" / "also.json").exists()   # a failed job does not stop the next


def test_thin_ls_parsing() -> None:
    assert parse_thin_ls("1 3 1 2\n  7 0 0 0\n") == {1: (3, 1, 2), 7: (0, 0, 0)}
