"""Unit tests of the thin pool: devices, snapshots, sharing, transactions, space, status, check."""
from __future__ import annotations

import errno
import io
import os

import pytest

from labkit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from labkit.thin import MetadataError, Pool, PoolFull, btree

BS = 64 << 10


@pytest.fixture
def pool(tmp_path):
    p = Pool.create(tmp_path / "pool", data_size=BS * 64, commit_interval=None)
    yield p
    p.close()


def block(ch: int) -> bytes:
    return bytes([ch]) * BS


# -- creation and options ---------------------------------------------------------------------------
@pytest.mark.parametrize("bs", ["32K", "96K", "2G", 0, "nonsense", 65537])
def test_bad_block_size(tmp_path, bs):
    with pytest.raises(InvalidArgument):
        Pool.create(tmp_path / "p", data_size="10M", block_size=bs)


@pytest.mark.parametrize("bs", ["64K", "128K", "1M", 1 << 30])
def test_good_block_sizes(tmp_path, bs):
    with Pool.create(tmp_path / "p", data_size="2G", block_size=bs) as p:
        assert p.block_size == (bs if isinstance(bs, int) else int(bs[:-1]) << (10 if bs[-1] == "K" else 20))


def test_data_size_below_one_block(tmp_path):
    with pytest.raises(InvalidArgument):
        Pool.create(tmp_path / "p", data_size="32K")


def test_create_twice_and_open_missing(tmp_path):
    Pool.create(tmp_path / "p", data_size="1M").close()
    with pytest.raises(AlreadyExists):
        Pool.create(tmp_path / "p", data_size="1M")
    with pytest.raises(NotFound):
        Pool.open(tmp_path / "nope")


def test_files_are_sparse_and_sized(tmp_path):
    with Pool.create(tmp_path / "p", data_size="10G") as p:
        st = os.stat(tmp_path / "p" / "data")
        assert st.st_size == 10 << 30
        assert st.st_blocks * 512 < (1 << 20)
        assert p.nr_data_blocks == (10 << 30) // BS


# -- devices ------------------------------------------------------------------------------------------
def test_unknown_and_taken_ids(pool):
    with pytest.raises(NotFound):
        pool.device(5)
    with pytest.raises(NotFound):
        pool.create_snap(2, 5)
    with pytest.raises(NotFound):
        pool.delete(5)
    pool.create_thin(1, "1M")
    with pytest.raises(AlreadyExists):
        pool.create_thin(1, "1M")
    with pytest.raises(AlreadyExists):
        pool.create_snap(1, 1)
    for bad in (-1, 1 << 24, "1", True):
        with pytest.raises(InvalidArgument):
            pool.create_thin(bad, "1M")


def test_overcommit_and_zero_reads(pool):
    pool.create_thin(1, "100G")  # the pool has 4 MiB
    pool.create_thin(2, "100G")
    dev = pool.device(1)
    assert dev.size == 100 << 30
    assert dev.read((50 << 30) + 3, 100) == bytes(100)
    assert pool.status().used_data_blocks == 0


def test_partial_writes_any_offset(pool):
    pool.create_thin(1, BS * 4)
    dev = pool.device(1)
    model = bytearray(BS * 4)
    for off, data in [(5, b"abc"), (BS - 2, b"XYZW"), (BS * 2 + 100, os.urandom(BS + 7)), (0, b"")]:
        dev.write(off, data)
        model[off:off + len(data)] = data
    assert dev.read(0, BS * 4) == bytes(model)
    assert dev.read(BS - 1, 3) == bytes(model[BS - 1:BS + 2])
    assert pool.usage(1).mapped_blocks == 4


def test_read_past_end_and_write_past_end(pool):
    pool.create_thin(1, 1000)
    dev = pool.device(1)
    dev.write(990, b"0123456789")
    assert dev.read(995, 100) == b"56789"
    assert dev.read(1000, 10) == b""
    assert dev.read(5000, 10) == b""
    with pytest.raises(InvalidArgument):
        dev.write(995, b"too long!")
    with pytest.raises(InvalidArgument):
        dev.read(-1, 1)


def test_snapshot_shares_then_breaks_sharing(pool):
    pool.create_thin(1, BS * 8)
    d1 = pool.device(1)
    d1.write(0, block(1) * 4)
    used = pool.status().used_data_blocks
    pool.create_snap(2, 1)
    assert pool.status().used_data_blocks == used  # no data copied
    assert pool.usage(1) == pool.usage(2) == type(pool.usage(1))(4, 0, 4)
    d2 = pool.device(2)
    d2.write(BS + 10, b"partial")  # partial write to a shared block: copy then patch
    assert pool.status().used_data_blocks == used + 1
    assert d1.read(BS, BS) == block(1)
    assert d2.read(BS, BS) == block(1)[:10] + b"partial" + block(1)[17:]
    assert pool.usage(2) == type(pool.usage(2))(4, 1, 3)
    bm = pool.block_map(2)
    assert [b.state for b in bm] == ["shared", "exclusive", "shared", "shared"] + ["unmapped"] * 4
    # exclusive now: a second write goes in place (no new block)
    d2.write(BS, b"again")
    assert pool.status().used_data_blocks == used + 1
    assert pool.check().ok


def test_write_exclusive_in_place_after_commit(pool):
    pool.create_thin(1, BS * 2)
    d = pool.device(1)
    d.write(0, block(7))
    pool.commit()
    before = list(pool.mappings(1))
    ops = pool.tm.data_sm.ops
    d.write(0, block(8))
    assert list(pool.mappings(1)) == before
    assert pool.tm.data_sm.ops == ops and not pool.tm.dirty  # no metadata touched at all


def test_snapshots_of_snapshots_and_delete_origin(pool):
    pool.create_thin(1, BS * 4)
    pool.device(1).write(0, block(1) * 4)
    pool.create_snap(2, 1)
    pool.device(2).write(BS, block(2))
    pool.create_snap(3, 2)
    pool.device(3).write(2 * BS, block(3))
    pool.create_snap(4, 3)
    pool.delete(1)
    pool.delete(3)
    assert pool.devices() == [2, 4]
    assert pool.device(2).read(0, 4 * BS) == block(1) + block(2) + block(1) + block(1)
    assert pool.device(4).read(0, 4 * BS) == block(1) + block(2) + block(3) + block(1)
    assert pool.check().ok
    pool.commit()
    # blocks used only by 1 and 3: block(1) at vb1 (overwritten in 2) is gone, the rest is shared
    assert pool.status().used_data_blocks == 5
    pool.delete(2)
    pool.delete(4)
    pool.commit()
    assert pool.status().used_data_blocks == 0
    assert pool.check().ok


def test_snapshot_cost_does_not_depend_on_size(tmp_path):
    """create_snap takes one reference on the origin's root: count the metadata work."""
    costs = []
    for nblocks in (256, 262144):  # 16 MiB and 16 GiB mapped at 64 KiB
        xml = io.StringIO(
            f'<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="128" '
            f'nr_data_blocks="{nblocks}"><device dev_id="1" mapped_blocks="{nblocks}" transaction="0" '
            f'creation_time="0" snap_time="0"><range_mapping origin_begin="0" data_begin="0" '
            f'length="{nblocks}" time="0"/></device></superblock>')
        with Pool.restore_xml(xml, tmp_path / f"p{nblocks}", commit_interval=None) as p:
            assert p.usage(1).mapped_blocks == nblocks
            tm = p.tm
            before = (tm.meta_sm.ops, tm.data_sm.ops, tm.stats.node_reads, tm.stats.node_shadows,
                      tm.stats.node_allocs)
            p.create_snap(2, 1)
            after = (tm.meta_sm.ops, tm.data_sm.ops, tm.stats.node_reads, tm.stats.node_shadows,
                     tm.stats.node_allocs)
            costs.append(tuple(a - b for a, b in zip(after, before)))
            assert btree.depth(tm, p.details(1).root) >= (1 if nblocks < 300 else 3)
            assert p.usage(2) == type(p.usage(2))(nblocks, 0, nblocks)
    assert costs[0] == costs[1] == (1, 0, 0, 0, 0)  # one refcount increment, nothing else


def test_first_write_to_snapshot_shadows_one_path(tmp_path):
    with Pool.create(tmp_path / "p", data_size=BS * 512, node_capacity=4, commit_interval=None) as p:
        p.create_thin(1, BS * 512)
        d = p.device(1)
        for vb in range(200):
            d.write(vb * BS, b"x")
        p.commit()
        depth = btree.depth(p.tm, p.details(1).root)
        p.create_snap(2, 1)
        s0 = p.tm.stats.node_shadows
        p.device(2).write(77 * BS, b"y")
        assert p.tm.stats.node_shadows - s0 == depth  # root-to-leaf path copied, nothing else
        assert p.check().ok


# -- discard ------------------------------------------------------------------------------------------
def test_discard_whole_blocks_only(pool):
    pool.create_thin(1, BS * 4)
    d = pool.device(1)
    d.write(0, block(9) * 4)
    d.discard(BS // 2, 2 * BS)  # covers block 1 wholly, halves of 0 and 2
    assert d.read(0, 4 * BS) == block(9) + bytes(BS) + block(9) + block(9)
    assert pool.usage(1).mapped_blocks == 3
    assert pool.status().used_data_blocks == 3
    d.discard(0, 4 * BS)
    assert pool.usage(1).mapped_blocks == 0
    assert pool.check().ok
    with pytest.raises(InvalidArgument):
        d.discard(0, 5 * BS)


def test_freed_blocks_not_reused_before_commit(pool):
    pool.create_thin(1, BS * 4)
    d = pool.device(1)
    d.write(0, block(1))
    pool.commit()
    (_, old, _), = pool.mappings(1)
    d.discard(0, BS)
    d.write(BS, block(2))
    (_, new, _), = pool.mappings(1)
    assert new != old  # the committed state still maps `old`
    pool.commit()
    d.write(2 * BS, block(3))
    assert pool.check().ok


# -- transactions -------------------------------------------------------------------------------------
def test_uncommitted_changes_vanish_without_commit(tmp_path):
    path = tmp_path / "p"
    p = Pool.create(path, data_size=BS * 16, commit_interval=None)
    p.create_thin(1, BS * 4)
    p.device(1).write(0, b"committed")
    tid = p.commit()
    p.create_thin(2, BS)
    p.device(1).write(BS, b"lost")
    p.delete(1)
    # simulate a crash: drop the pool without closing it
    os.close(p._mfd)
    os.close(p._dfd)
    p._closed = True
    with Pool.open(path) as q:
        assert q.transaction_id == tid
        assert q.devices() == [1]
        assert q.device(1).read(0, 9) == b"committed"
        assert q.device(1).read(BS, 4) == bytes(4)
        assert q.check().ok


def test_close_commits_and_reopen(tmp_path):
    path = tmp_path / "p"
    with Pool.create(path, data_size=BS * 16) as p:
        p.create_thin(3, "1M")
        p.device(3).write(100, b"kept")
    with Pool.open(path) as p:
        assert p.devices() == [3]
        assert p.device(3).read(100, 4) == b"kept"
        tid = p.transaction_id
    with Pool.open(path) as p:  # nothing changed: no new transaction
        assert p.transaction_id == tid


def test_flush_commits(pool):
    pool.create_thin(1, BS)
    tid = pool.transaction_id
    pool.device(1).write(0, b"x")
    pool.device(1).flush()
    assert pool.transaction_id == tid + 1


def test_time_based_commit(tmp_path):
    with Pool.create(tmp_path / "p", data_size=BS * 16, commit_interval=0.0) as p:
        p.create_thin(1, BS * 4)
        tid = p.transaction_id
        p.device(1).write(0, b"x")
        assert p.transaction_id == tid + 1


def test_closed_pool_refuses(tmp_path):
    p = Pool.create(tmp_path / "p", data_size=BS * 16)
    p.close()
    p.close()
    with pytest.raises(FailedPrecondition):
        p.devices()


# -- corruption -----------------------------------------------------------------------------------------
def test_corrupt_superblock(tmp_path):
    path = tmp_path / "p"
    Pool.create(path, data_size=BS * 16).close()
    with open(path / "metadata", "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(MetadataError, match="checksum"):
        Pool.open(path)
    with open(path / "metadata", "r+b") as f:
        f.write(b"garbage!" * 4)
    with pytest.raises(MetadataError, match="magic"):
        Pool.open(path)
    assert issubclass(MetadataError, FailedPrecondition)


def test_corrupt_node_detected_by_check(tmp_path):
    path = tmp_path / "p"
    with Pool.create(path, data_size=BS * 16) as p:
        p.create_thin(1, BS * 4)
        p.device(1).write(0, b"x")
        root = p.details(1).root
    with open(path / "metadata", "r+b") as f:
        f.seek(root * 4096 + 200)
        f.write(b"\x01\x02")
    with Pool.open(path) as p:
        r = p.check()
        assert not r.ok and any("checksum" in x for x in r.problems)


def test_check_reports_leaks_and_over_references(pool):
    pool.create_thin(1, BS * 4)
    pool.device(1).write(0, block(1) * 2)
    assert pool.check().ok
    (_, db, _), _ = pool.mappings(1)
    pool.tm.data_sm.inc(db)  # over-referenced
    free = pool.tm.data_sm.alloc()  # leaked
    r = pool.check()
    assert not r.ok
    assert any("over-referenced" in x and f"data block {db}:" in x for x in r.problems)
    assert any("leaked" in x and f"data block {free}:" in x for x in r.problems)
    assert "checking space map counts" in str(r)


# -- space ----------------------------------------------------------------------------------------------
def test_pool_full_enospc_and_recovery(tmp_path):
    with Pool.create(tmp_path / "p", data_size=BS * 4, commit_interval=None) as p:
        p.create_thin(1, "1G")
        d = p.device(1)
        d.write(0, block(1) * 4)
        tid = p.commit()
        with pytest.raises(OSError) as ei:
            d.write(4 * BS, b"no room")
        assert ei.value.errno == errno.ENOSPC
        assert isinstance(ei.value, PoolFull) and isinstance(ei.value, FailedPrecondition)
        st = p.status()
        assert st.mode == "out_of_data_space" and "out_of_data_space" in str(st)
        assert d.read(0, 4 * BS) == block(1) * 4 and p.transaction_id == tid
        d.write(0, block(2))  # in place: needs no new block
        d.discard(BS, BS)  # freed, reusable after a commit (the allocator commits by itself)
        d.write(4 * BS, b"room now")
        assert d.read(4 * BS, 8) == b"room now"
        assert p.status().mode == "rw"
        assert p.check().ok


def test_queue_if_no_space_marks_status(tmp_path):
    with Pool.create(tmp_path / "p", data_size=BS * 2, error_if_no_space=False, commit_interval=None) as p:
        p.create_thin(1, "1M")
        p.device(1).write(0, block(1) * 2)
        with pytest.raises(OSError):
            p.device(1).write(2 * BS, b"x")
        st = p.status()
        assert st.queued_io and "queue_if_no_space" in str(st)


def test_low_water_mark_fires_once(tmp_path):
    calls = []
    with Pool.create(tmp_path / "p", data_size=BS * 8, low_water_mark=3, on_low_water=calls.append,
                     commit_interval=None) as p:
        p.create_thin(1, "1M")
        d = p.device(1)
        d.write(0, block(1) * 4)
        assert calls == [] and not p.status().low_water
        d.write(4 * BS, block(1))  # 3 free
        assert calls == [p] and p.status().low_water
        d.write(5 * BS, block(1))
        assert calls == [p]
        d.discard(0, 6 * BS)
        p.commit()
        assert not p.status().low_water
        d.write(0, block(1) * 5)
        assert len(calls) == 2


def test_status_line(pool):
    pool.create_thin(1, "1M")
    pool.device(1).write(0, b"x")
    tid = pool.commit()
    st = pool.status()
    assert st.used_data_blocks == 1 and st.total_data_blocks == 64
    assert st.held_root is None and st.mode == "rw" and not st.needs_check
    assert 0 < st.used_metadata_blocks < st.total_metadata_blocks
    assert str(st) == (f"{tid} {st.used_metadata_blocks}/{st.total_metadata_blocks} 1/64 - rw "
                       "no_discard_passdown error_if_no_space -")


def test_many_blocks_deep_tree(tmp_path):
    with Pool.create(tmp_path / "p", data_size=BS * 2000, node_capacity=8, commit_interval=None) as p:
        p.create_thin(1, BS * 2000)
        d = p.device(1)
        for vb in range(0, 1500, 3):
            d.write(vb * BS, vb.to_bytes(4, "little"))
        p.create_snap(2, 1)
        for vb in range(0, 1500, 9):
            p.device(2).write(vb * BS, b"\xff")
        d.discard(0, 600 * BS)
        assert p.check().ok
        p.commit()
    with Pool.open(tmp_path / "p") as p:
        assert p.device(1).read(1200 * BS, 4) == (1200).to_bytes(4, "little")
        assert p.device(2).read(9 * BS, 4) == b"\xff" + (9).to_bytes(4, "little")[1:]
        assert p.usage(1).mapped_blocks == 300
        assert p.check().ok


def test_xml_round_trip(tmp_path):
    with Pool.create(tmp_path / "a", data_size=BS * 64, commit_interval=None) as p:
        p.create_thin(1, BS * 16)
        p.device(1).write(0, os.urandom(BS * 5))
        p.create_snap(2, 1)
        p.device(2).write(3 * BS, b"x")
        buf = io.StringIO()
        p.dump_xml(buf)
        usages = {i: p.usage(i) for i in p.devices()}
        maps = {i: list(p.mappings(i)) for i in p.devices()}
    buf.seek(0)
    with Pool.restore_xml(buf, tmp_path / "b", virtual_sizes={1: BS * 16, 2: BS * 16}) as q:
        assert {i: q.usage(i) for i in q.devices()} == usages
        assert {i: list(q.mappings(i)) for i in q.devices()} == maps
        assert q.device(2).size == BS * 16
        assert q.check().ok
        out = io.StringIO()
        q.dump_xml(out)
    assert out.getvalue() == buf.getvalue()


def test_restore_rejects_bad_xml(tmp_path):
    with pytest.raises(InvalidArgument):
        Pool.restore_xml(io.StringIO("<superblock"), tmp_path / "x")
    bad = ('<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="128" '
           'nr_data_blocks="4"><device dev_id="1" mapped_blocks="1" transaction="0" creation_time="0" '
           'snap_time="0"><single_mapping origin_block="0" data_block="9" time="0"/></device></superblock>')
    with pytest.raises(InvalidArgument):
        Pool.restore_xml(io.StringIO(bad), tmp_path / "y")


def test_committed_shared_block_never_written_in_place(tmp_path):
    """After a commit, X and its snapshot S share D. S overwrites the block (S now maps a copy, D's
    count drops to 1), then X writes it: D is still what the *committed* S maps, so X must copy too
    (dm-thin's rule: a mapping older than the device's last snapshot counts as shared)."""
    path = tmp_path / "p"
    p = Pool.create(path, data_size=BS * 16, commit_interval=None)
    p.create_thin(1, BS * 2)
    p.device(1).write(0, block(1))
    p.create_snap(2, 1)
    p.commit()
    p.device(2).write(0, block(2))
    p.device(1).write(0, block(3))
    assert len({db for d in (1, 2) for _vb, db, _t in p.mappings(d)}) == 2
    os.close(p._mfd)  # crash
    os.close(p._dfd)
    p._closed = True
    with Pool.open(path) as q:
        assert q.device(1).read(0, BS) == block(1) == q.device(2).read(0, BS)


def test_after_deleting_snapshot_first_write_copies_then_in_place(pool):
    pool.create_thin(1, BS)
    pool.device(1).write(0, block(1))
    pool.create_snap(2, 1)
    pool.delete(2)
    pool.commit()
    (_, d0, _), = pool.mappings(1)
    pool.device(1).write(0, b"x")  # older than the snapshot: copied, as in dm-thin
    (_, d1, _), = pool.mappings(1)
    pool.device(1).write(0, b"y")
    (_, d2, _), = pool.mappings(1)
    assert d0 != d1 == d2


def test_threads_share_one_pool(tmp_path):
    import threading
    with Pool.create(tmp_path / "p", data_size=BS * 256, node_capacity=6, commit_interval=0.01) as p:
        for d in range(4):
            p.create_thin(d, BS * 32)
        errors = []

        def work(d: int) -> None:
            try:
                dev = p.device(d)
                for i in range(60):
                    dev.write((i % 32) * BS + i, bytes([d + 1]) * 1000)
                    if i % 20 == 0:
                        p.create_snap(100 + d * 10 + i // 20, d)
                    if i % 7 == 0:
                        dev.discard(((i + 5) % 32) * BS, BS)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        ts = [threading.Thread(target=work, args=(d,)) for d in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors
        assert p.check().ok
        assert len(p.devices()) == 16


def test_metadata_full_goes_read_only(tmp_path):
    path = tmp_path / "p"
    with Pool.create(path, data_size=BS * 4096, metadata_size="256K", node_capacity=4,
                     commit_interval=None) as p:
        p.create_thin(1, BS * 4096)
        p.commit()
        tid = p.transaction_id
        with pytest.raises(OSError) as ei:
            for vb in range(4096):
                p.device(1).write(vb * BS, b"x")
        assert ei.value.errno == errno.ENOSPC
        assert p.status().mode == "read_only" and str(p.status()).split()[4] == "ro"
        with pytest.raises(FailedPrecondition):
            p.device(1).write(0, b"y")
    with Pool.open(path) as q:  # the last commit is intact
        assert q.check().ok
        assert q.transaction_id >= tid


def test_tree_shrinks_back_after_discards(tmp_path):
    with Pool.create(tmp_path / "p", data_size=BS * 600, node_capacity=4, commit_interval=None) as p:
        p.create_thin(1, BS * 600)
        d = p.device(1)
        for vb in range(500):
            d.write(vb * BS, b"x")
        p.create_snap(2, 1)  # removals below must copy shared siblings, not steal them
        deep = btree.depth(p.tm, p.details(1).root)
        assert deep >= 5
        d.discard(0, 490 * BS)
        assert btree.depth(p.tm, p.details(1).root) <= 3
        assert p.usage(1).mapped_blocks == 10 and p.usage(2).mapped_blocks == 500
        assert p.check().ok
        d.discard(0, 600 * BS)
        assert btree.depth(p.tm, p.details(1).root) == 1
        p.delete(2)
        p.commit()
        assert p.check().ok
        assert p.status().used_data_blocks == 0
        assert p.status().used_metadata_blocks < 20


def test_one_writer_at_a_time(tmp_path):
    path = tmp_path / "p"
    with Pool.create(path, data_size=BS * 4):
        with pytest.raises(FailedPrecondition, match="open in another"):
            Pool.open(path)
    Pool.open(path).close()
