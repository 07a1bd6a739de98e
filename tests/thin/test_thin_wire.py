"""Without a daemon: the wire's error round trip, status lines (labkit's and dmsetup's), the dmthin
backend's abilities over a captured `dmsetup status` line, Pool.sharing, and the module graph of labkit.thin."""
from __future__ import annotations

import ast
import errno
import os

import pytest

from labkit import errors
from labkit.snapshots import dmthin
from labkit.snapshots.dmthin import DmThinSnapshotter
from labkit.thin import CheckReport, MetadataError, Pool, PoolFull, Status, wire

BS = 64 << 10

# captured with `dmsetup status` in Debian's 6.1 kernel under vng (HOST-NOTES): a pool of 1 GiB data (64 KiB
# blocks) and 64 MiB metadata on loop files, table "... 128 819 1 skip_block_zeroing", after create_thin 0,
# mkfs.ext4 on a 256 MiB thin device and create_snap 1 0
DMSETUP_LINE = "0 2097152 thin-pool 0 1650/16384 144/16384 - rw discard_passdown queue_if_no_space - 1024 \n"


@pytest.mark.parametrize("exc", [
    errors.NotFound("thin device 3 in pool '/p'", fix="list ids with pool.devices()"),
    errors.NotFound("thin device 3", "is gone", fix=None),
    errors.AlreadyExists("thin device 1 in pool '/p'", fix="pick an unused id"),
    errors.AlreadyExists("snapshot 'x'", "is taken twice"),
    errors.FailedPrecondition("thin pool '/p'", "is read-only", fix="reopen it"),
    errors.InvalidArgument("thin device id -1", "must be an integer 0..16777215", fix="pick a small one"),
    errors.Unsupported("thin pool daemon", "did not start"),
    PoolFull("thin pool '/p'", "is out of data space", fix="delete devices"),
    MetadataError("thin pool metadata block 7", "is not a valid B-tree node (checksum)", fix="run check"),
])
def test_errors_round_trip_through_their_constructors(exc):
    back = wire.decode_error(wire.encode_error(exc))
    assert type(back) is type(exc)
    assert (back.subject, back.detail, back.fix, str(back)) == (exc.subject, exc.detail, exc.fix, str(exc))
    if isinstance(exc, PoolFull):
        assert isinstance(back, OSError) and back.errno == errno.ENOSPC


def test_oserror_and_garbage_errors():
    e = wire.decode_error(wire.encode_error(OSError(errno.EIO, "Input/output error")))
    assert type(e) is OSError and e.errno == errno.EIO
    assert type(wire.decode_error({"type": "SystemExit", "subject": "x"})) is errors.LabkitError
    assert type(wire.decode_error("nonsense")) is errors.LabkitError
    bug = wire.decode_error(wire.encode_error(ZeroDivisionError("division by zero")))
    assert type(bug) is errors.LabkitError and "ZeroDivisionError" in str(bug)


def test_status_parses_both_lines():
    st = Status.parse(DMSETUP_LINE, low_water_mark=819)
    assert (st.transaction_id, st.used_metadata_blocks, st.total_metadata_blocks, st.used_data_blocks,
            st.total_data_blocks, st.held_root, st.mode, st.needs_check, st.error_if_no_space) == \
        (0, 1650, 16384, 144, 16384, None, "rw", False, False)
    assert st.low_water is False
    assert Status.parse(DMSETUP_LINE, low_water_mark=16300).low_water is True
    ours = Status(3, 10, 100, 5, 50, 7, "read_only", True, False, False, False)
    assert str(Status.parse(str(ours))) == str(ours)
    full = Status.parse("0 8 thin-pool 9 1/2 50/50 - out_of_data_space ignore_discard queue_if_no_space needs_check 1")
    assert full.mode == "out_of_data_space" and full.needs_check and not full.error_if_no_space
    with pytest.raises(errors.FailedPrecondition):
        Status.parse("0 41943040 thin-pool Fail")
    for bad in ("", "0 8 linear", "1 2/3 4/5 - rw", "x 1/2 3/4 - rw no_discard_passdown error_if_no_space -",
                "1 1/2 3/4 - sideways no_discard_passdown error_if_no_space -"):
        with pytest.raises(errors.InvalidArgument):
            Status.parse(bad)


@pytest.fixture
def dm(monkeypatch):
    """A DmThinSnapshotter that never touched device-mapper, its status ioctl answered from a captured line."""
    calls = []

    def status(name):
        calls.append(("status", name))
        return status.line
    status.line = DMSETUP_LINE
    monkeypatch.setattr(dmthin.dm, "status", status)
    sn = DmThinSnapshotter.__new__(DmThinSnapshotter)
    sn.tag, sn.block_size, sn.low_water = "abcd1234", BS, 819
    sn.calls = calls
    return sn


def test_dmthin_abilities_from_dmsetup_status(dm):
    st = dm.pool_status()
    assert st.used_data_blocks == 144 and dm.calls[-1] == ("status", "labkit-abcd1234-pool")
    space = dm.store_space()
    assert (space.used_bytes, space.capacity_bytes) == (144 * BS, 16384 * BS)
    rep = dm.pool_check()
    assert isinstance(rep, CheckReport) and rep.ok and rep.transaction_id == 0
    assert rep.free_metadata_blocks == 16384 - 1650 and rep.notes == [dmthin.CHECK_NOTE]
    dm.calls.clear()
    dmthin.dm.status.line = DMSETUP_LINE.replace(" - 1024", " needs_check 1024")
    assert not dm.pool_check().ok
    dmthin.dm.status.line = "0 41943040 thin-pool Fail"
    rep = dm.pool_check()
    assert not rep.ok and "Fail" in rep.problems[0]
    opts = DmThinSnapshotter.options_for(3 << 30)
    assert opts["data_size"] >= 12 << 30 and opts["base_size"] >= 12 << 30


def test_sharing_names_the_other_devices(tmp_path):
    with Pool.create(tmp_path / "p", data_size=BS * 32) as p:
        p.create_thin(1, BS * 8)
        p.device(1).write(0, b"a" * (3 * BS))
        p.create_snap(2, 1)
        p.create_snap(3, 1)
        p.device(3).write(BS, b"b")
        assert p.sharing(1) == [(0, 0, (2, 3)), (1, 1, (2,)), (2, 2, (2, 3))]
        assert p.sharing(3) == [(0, 0, (1, 2)), (1, 3, ()), (2, 2, (1, 2))]
        with pytest.raises(errors.NotFound):
            p.sharing(9)


def _imports(mod: str, *, outside: str | None = None) -> set[str]:
    """Sibling modules of labkit.thin that ``mod`` imports (``from .x import`` and ``from . import x``),
    leaving out the imports inside function ``outside``."""
    path = os.path.join(os.path.dirname(__import__("labkit.thin").thin.__file__), mod + ".py")
    with open(path) as f:
        tree = ast.parse(f.read())
    skip = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == outside
            for n in ast.walk(f)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in skip:
            out |= {node.module} if node.module else {a.name for a in node.names}
    return out


def test_pool_layers_are_one_way():
    """pool uses check and xml; they know the metadata layer and the records, never the pool."""
    assert {"check", "xml"} <= _imports("pool")
    for mod in ("check", "xml", "wire", "records", "metadata", "btree", "spacemap"):
        assert not {"pool", "daemon", "client"} & _imports(mod), mod
    # a client never loads FUSE: only the daemon it forks imports it, in the child, after isolating itself
    assert "daemon" in _imports("client") and "daemon" not in _imports("client", outside="_serve_forked")
