"""labkit's thin_dump XML through the real thin-provisioning-tools: thin_restore, thin_check, thin_ls."""
from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest

from labkit.thin import Pool

TOOLS = ("thin_restore", "thin_check", "thin_ls", "thin_dump")
MISSING = [t for t in TOOLS if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}: "
                                "apt-get install thin-provisioning-tools")
BS = 64 << 10


def restore_real(pool: Pool, tmp_path) -> str:
    xml = tmp_path / "pool.xml"
    with open(xml, "w") as f:
        pool.dump_xml(f)
    meta = tmp_path / "META"
    with open(meta, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["thin_restore", "-i", str(xml), "-o", str(meta)], check=True, capture_output=True)
    return str(meta)


def build(tmp_path, **kw) -> Pool:
    """Snapshots of snapshots with full and partial overwrites, a discard and a deleted origin."""
    p = Pool.create(tmp_path / "pool", data_size=BS * 256, commit_interval=None, **kw)
    p.create_thin(1, BS * 64)
    p.device(1).write(0, os.urandom(BS * 40))
    p.create_snap(2, 1)
    p.device(2).write(5 * BS + 100, b"partial")  # breaks sharing of one block
    p.device(2).write(10 * BS, os.urandom(3 * BS))
    p.create_snap(3, 2)
    p.device(3).write(0, b"x")
    p.device(3).discard(20 * BS, 4 * BS)
    p.create_snap(4, 3)
    p.device(4).write(50 * BS, os.urandom(BS * 2))  # beyond what the origin maps
    p.device(1).write(39 * BS, b"origin moves on")
    p.create_thin(7, "1G")
    p.device(7).write(1 << 29, b"far away")
    p.create_snap(8, 1)
    p.delete(1)
    p.commit()
    return p


@pytest.mark.parametrize("node_capacity", [None, 5])
def test_thin_check_and_thin_ls_agree(tmp_path, node_capacity):
    with build(tmp_path, node_capacity=node_capacity) as p:
        assert p.check().ok
        meta = restore_real(p, tmp_path)
        ck = subprocess.run(["thin_check", meta], capture_output=True, text=True)
        assert ck.returncode == 0, ck.stdout + ck.stderr
        ls = subprocess.run(["thin_ls", "--no-headers", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS",
                             meta], capture_output=True, text=True, check=True)
        theirs = {int(r[0]): tuple(map(int, r[1:])) for r in (line.split() for line in ls.stdout.splitlines())}
        ours = {d: tuple(vars(p.usage(d)).values()) for d in p.devices()}
        assert theirs == ours
        assert any(s > 0 and e > 0 for _m, e, s in ours.values())  # the case is not trivial


def test_thin_dump_of_restored_metadata_reads_back(tmp_path):
    with build(tmp_path) as p:
        meta = restore_real(p, tmp_path)
        ours = io.StringIO()
        p.dump_xml(ours)
        maps = {d: list(p.mappings(d)) for d in p.devices()}
        sizes = {d: p.device(d).size for d in p.devices()}
    dumped = subprocess.run(["thin_dump", meta], capture_output=True, text=True, check=True).stdout
    with Pool.restore_xml(io.StringIO(dumped), tmp_path / "back", virtual_sizes=sizes) as q:
        assert {d: list(q.mappings(d)) for d in q.devices()} == maps
        assert q.check().ok
