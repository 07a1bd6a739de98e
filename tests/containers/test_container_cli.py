"""``labkit container ...`` through its own register(), as labkit/cli.py wires it."""
from __future__ import annotations

import argparse

import pytest

from labkit.containers import cli


def _run(argv, capsys):
    p = argparse.ArgumentParser()
    p.add_argument("--root")
    cli.register(p.add_subparsers())
    args = p.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


@pytest.mark.root
def test_container_cli_round_trip(tmp_path, rootfs, capsys):
    root = ["--root", str(tmp_path)]
    code, out = _run(root + ["container", "run", "--name", "one", "-e", "X=1", rootfs, "--", "sh", "-c",
                             "echo $X; exit 4"], capsys)
    assert (code, out) == (4, "1\n")
    code, out = _run(root + ["container", "run", "-d", "--name", "bg", "-m", "32M", rootfs, "--", "sleep", "30"],
                     capsys)
    assert code == 0 and len(out.strip()) == 10
    code, out = _run(root + ["container", "ps"], capsys)
    assert "exited (4)" in out and "running" in out
    assert _run(root + ["container", "exec", "bg", "--", "hostname"], capsys) == (0, "bg\n")
    assert '"memory_limit_bytes": 33554432' in _run(root + ["container", "stats", "bg"], capsys)[1]
    assert "exit code 137" in _run(root + ["container", "stop", "-t", "0.2", "bg"], capsys)[1]
    _run(root + ["container", "rm", "one", "bg"], capsys)
    assert _run(root + ["container", "ps", "--json"], capsys)[1].strip() == "[]"


@pytest.mark.root
def test_container_cli_tty_and_profile_flags(tmp_path, rootfs, capfd):
    root = ["--root", str(tmp_path)]
    code, out = _run(root + ["container", "run", "-it", "--rm", rootfs, "--", "sh", "-c",
                             "[ -t 0 ] && echo on-a-tty; exit 3"], capfd)
    assert code == 3 and "on-a-tty" in out
    code, out = _run(root + ["container", "run", "--rm", "--cap-drop", "ALL", "--cap-add", "chown", rootfs, "--",
                             "grep", "CapEff", "/proc/self/status"], capfd)
    assert code == 0 and "0000000000000001" in out
    code, out = _run(root + ["container", "run", "--rm", "--privileged", rootfs, "--", "grep", "Seccomp:",
                             "/proc/self/status"], capfd)
    assert code == 0 and "Seccomp:\t0" in out
