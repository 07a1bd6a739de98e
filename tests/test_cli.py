"""The labkit command: version, backends, one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from labkit import __version__
from labkit.cli import main


def labkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True)


def test_version():
    r = labkit("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"labkit {__version__}"


@pytest.mark.root
def test_backends_lists_the_four_that_run_here(tmp_path):
    """copy, overlay, btrfs and reflink run wherever the kernel has their filesystems (this machine does:
    a 'no' here is a failure); a kernel without one skips, naming it."""
    from labkit._sys.probe import has_filesystem
    missing = [fs for fs in ("overlay", "btrfs", "xfs") if not has_filesystem(fs)]
    if missing:
        pytest.skip(f"this kernel lacks {', '.join(missing)} (see /proc/filesystems)")
    r = labkit("--root", str(tmp_path), "backends")
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:-1]}
    for name in ("copy", "overlay", "btrfs", "reflink"):
        assert lines[name].split()[1] == "yes", lines[name]
    assert "dmthin" in lines  # listed, with the reason it does not run


def test_unknown_backend_is_one_line_error(tmp_path, capsys):
    rc = main(["--root", str(tmp_path), "bench", "snapshot-time", "--backend", "zfs", "--sizes", "1M"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "zfs" in err and "choose from" in err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_root_is_accepted_after_the_command(tmp_path, capsys):
    assert main(["gc", "--root", str(tmp_path), "--dry-run"]) == 0
    assert str(tmp_path) in capsys.readouterr().out


@pytest.mark.root
def test_docker_shaped_verbs(tmp_path):
    R = ["--root", str(tmp_path / "lab"), "--backend", "overlay"]
    assert labkit("image", "import", "busybox", "--tag", "busybox", *R).returncode == 0
    r = labkit("run", "--name", "b1", "busybox", *R, "--", "sh", "-c", "echo hi > /hello")
    assert r.returncode == 0, r.stderr
    assert labkit("commit", "b1", "hello:v1", *R).returncode == 0
    assert labkit("rm", "b1", *R).returncode == 0
    r = labkit("run", "--rm", "hello:v1", *R, "--", "cat", "/hello")
    assert r.stdout == "hi\n", r.stderr
    assert "hello:v1" in labkit("image", "tree", *R).stdout
    r = labkit("image", "rm", "busybox", *R)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "used by image" in r.stderr
    r = labkit("run", "nope:1", *R, "--", "true")
    assert r.returncode == 1 and "not found" in r.stderr and r.stderr.count("\n") == 1
