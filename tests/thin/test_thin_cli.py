"""``labkit thin check|status|ls|dump PATH`` through the command's own parser."""
from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from labkit.errors import InvalidArgument, NotFound
from labkit.thin import Pool
from labkit.thin.cli import register

BS = 64 << 10


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="labkit")
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture
def pool_path(tmp_path):
    path = tmp_path / "pool"
    with Pool.create(path, data_size=BS * 32) as p:
        p.create_thin(1, "1M")
        p.device(1).write(0, b"x" * (3 * BS))
        p.create_snap(2, 1)
        p.device(2).write(0, b"y")
    return str(path)


def test_status(pool_path, capsys):
    assert run(["thin", "status", pool_path]) == 0
    line = capsys.readouterr().out.strip()
    parts = line.split()
    assert parts[2] == "4/32" and parts[3:] == ["-", "rw", "no_discard_passdown", "error_if_no_space", "-"]


def test_ls(pool_path, capsys):
    assert run(["thin", "ls", pool_path, "--no-headers", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows == [["1", "3", "1", "2"], ["2", "3", "1", "2"]]
    assert run(["thin", "ls", pool_path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["DEV", "MAPPED", "CREATE_TIME", "SNAP_TIME"]
    assert out[1].split()[:2] == ["1", "192KiB"]
    with pytest.raises(InvalidArgument):
        run(["thin", "ls", pool_path, "-o", "NOPE"])


def test_check_ok_and_broken(pool_path, capsys):
    assert run(["thin", "check", pool_path]) == 0
    out = capsys.readouterr().out
    assert "checking space map counts" in out
    with Pool.open(pool_path) as p:
        p.tm.data_sm.alloc()  # a leak, committed on close
    assert run(["thin", "check", pool_path]) == 1
    assert "leaked" in capsys.readouterr().out


def test_missing_pool():
    with pytest.raises(NotFound):
        run(["thin", "status", "/nonexistent/pool"])


@pytest.mark.skipif(shutil.which("thin_restore") is None, reason="needs thin_restore: "
                    "apt-get install thin-provisioning-tools")
def test_dump_goes_through_thin_restore(pool_path, tmp_path):
    xml = tmp_path / "d.xml"
    assert run(["thin", "dump", pool_path, "-o", str(xml)]) == 0
    meta = tmp_path / "META"
    with open(meta, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["thin_restore", "-i", str(xml), "-o", str(meta)], check=True, capture_output=True)
    subprocess.run(["thin_check", str(meta)], check=True, capture_output=True)


def test_main_cli_has_thin(pool_path, capsys):
    from labkit.cli import main
    assert main(["thin", "status", pool_path]) == 0
    assert "rw" in capsys.readouterr().out
