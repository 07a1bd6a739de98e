"""The pool's data path: runs of blocks in one syscall, reads into a caller's buffer, and copies done
outside the pool's lock by several threads at once while snapshots, discards and commits happen."""
from __future__ import annotations

import os
import random
import threading

import pytest

from labkit.thin import Pool

BS = 64 << 10


def test_read_into_matches_read_and_zero_fills(tmp_path):
    with Pool.create(tmp_path / "p", data_size=BS * 64, commit_interval=None) as p:
        p.create_thin(1, BS * 16)
        dev = p.device(1)
        data = os.urandom(3 * BS + 123)
        dev.write(BS // 2, data)                     # partial head, two whole blocks, partial tail
        buf = bytearray(b"\xff" * (6 * BS))
        assert dev.read_into(0, buf) == 6 * BS
        assert bytes(buf) == dev.read(0, 6 * BS) == bytes(BS // 2) + data + bytes(6 * BS - BS // 2 - len(data))
        tail = bytearray(b"\xff" * (2 * BS))
        assert dev.read_into(15 * BS, tail) == BS   # short at the end of the device
        assert bytes(tail[:BS]) == bytes(BS)
        assert dev.read_into(16 * BS, bytearray(10)) == 0


def test_consecutive_blocks_are_written_in_one_syscall(tmp_path, monkeypatch):
    calls = []
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, b, off: calls.append(len(b)) or real(fd, b, off))
    with Pool.create(tmp_path / "p", data_size=BS * 64, commit_interval=None) as p:
        p.create_thin(1, BS * 32)
        calls.clear()                                # (the metadata written by create)
        p.device(1).write(0, os.urandom(16 * BS))    # 16 fresh blocks, allocated in order
        assert calls == [16 * BS]
        calls.clear()
        p.device(1).write(BS, os.urandom(4 * BS))    # in place, still consecutive
        assert calls == [4 * BS]


def test_threads_write_read_snapshot_discard_and_commit_at_once(tmp_path):
    """Eight writers and readers on their own ranges of two devices while another thread takes
    snapshots, discards and commits: every byte read back is what its writer wrote last, every
    snapshot holds a state its origin had, and the recount is clean."""
    p = Pool.create(tmp_path / "p", data_size=BS * 1024, commit_interval=0.01)
    p.create_thin(1, BS * 256)
    p.create_thin(2, BS * 256)
    stop = threading.Event()
    errors: list[BaseException] = []
    last: dict[tuple[int, int], bytes] = {}

    def worker(w: int) -> None:
        rng = random.Random(w)
        dev_id, base = 1 + w % 2, (w // 2) * 32 * BS   # 4 workers per device, 32 blocks each
        dev = p.device(dev_id)
        try:
            for i in range(60):
                off = base + rng.randrange(0, 28) * BS + rng.choice((0, 0, 512, 4096))
                data = bytes([w * 16 + i % 16]) * rng.choice((BS, 2 * BS, 3 * BS, 4096))
                dev.write(off, data)
                assert dev.read(off, len(data)) == data
                last[(dev_id, off)] = data
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def admin() -> None:
        n = 10
        try:
            while not stop.is_set():
                p.create_snap(n, 1)
                p.device(2).discard(250 * BS, 4 * BS)   # outside every worker's range
                p.commit()
                p.delete(n)
                n += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    a = threading.Thread(target=admin)
    a.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    a.join(60)
    assert not errors, errors
    try:
        report = p.check()
        assert report.ok, report
    finally:
        p.close()
    with Pool.open(tmp_path / "p") as q:
        for w in range(8):
            dev_id, base = 1 + w % 2, (w // 2) * 32 * BS
            mine = {off: d for (dv, off), d in last.items() if dv == dev_id and base <= off < base + 32 * BS}
            # the newest write per offset wins; check those not overlapped by a later write of the worker
            for off, data in mine.items():
                got = q.device(dev_id).read(off, len(data))
                overl = [o for o in mine if o != off and o < off + len(data) and off < o + len(mine[o])]
                if not overl:
                    assert got == data


@pytest.mark.parametrize("op", ["commit", "create_snap", "delete", "discard", "close"])
def test_commit_snapshot_delete_discard_close_wait_for_a_copy_in_flight(tmp_path, monkeypatch, op):
    """A write's copy runs without the pool's lock (reads of other blocks go on meanwhile), but nothing
    that could make its mapping durable, share, free or close its block goes before the copy ends."""
    p = Pool.create(tmp_path / "p", data_size=BS * 256, commit_interval=None)
    p.create_thin(1, BS * 64)
    p.create_thin(2, BS * 64)
    p.device(1).write(40 * BS, b"other")
    gate, entered = threading.Event(), threading.Event()
    real = os.pwrite

    def slow(fd, b, off):
        if len(b) == 16 * BS:
            entered.set()
            gate.wait(10)
        return real(fd, b, off)

    monkeypatch.setattr(os, "pwrite", slow)
    data = os.urandom(16 * BS)
    w = threading.Thread(target=p.device(1).write, args=(0, data))
    w.start()
    try:
        assert entered.wait(10)
        assert p.device(1).read(40 * BS, 5) == b"other"          # the lock is free during the copy
        call = {"commit": p.commit, "create_snap": lambda: p.create_snap(3, 1), "delete": lambda: p.delete(2),
                "discard": lambda: p.device(2).discard(0, BS * 4), "close": p.close}[op]
        done: list[bool] = []
        t = threading.Thread(target=lambda: (call(), done.append(True)))
        t.start()
        t.join(0.3)
        assert not done, f"{op} went ahead of a copy in flight"
    finally:
        gate.set()
        w.join(10)
    t.join(10)
    assert done
    if op == "create_snap":
        assert p.device(3).read(0, 16 * BS) == data               # the snapshot has the whole write
    p.close()
    with Pool.open(tmp_path / "p") as q:
        assert q.device(1).read(0, 16 * BS) == data and q.check().ok


@pytest.mark.parametrize("n", [1, 5])
def test_close_waits_for_copies_in_flight(tmp_path, n):
    p = Pool.create(tmp_path / "p", data_size=BS * 256)
    p.create_thin(1, BS * 128)
    ts = [threading.Thread(target=p.device(1).write, args=(i * 16 * BS, os.urandom(16 * BS))) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    p.close()
    with Pool.open(tmp_path / "p") as q:
        assert q.usage(1).mapped_blocks == 16 * n and q.check().ok


@pytest.mark.root
def test_a_device_made_again_shows_its_own_size_and_data(tmp_path):
    """The export keeps the kernel's page cache between opens and writeback-caches writes (the kernel then
    keeps a file's size itself): a device id deleted and made again (orphan recovery does that) must still
    show the new device, never the old one's pages or size."""
    from labkit.thin.client import PoolClient
    Pool.create(tmp_path / "pool", data_size="64M").close()
    c = PoolClient(str(tmp_path / "pool"), str(tmp_path / "dev"))
    try:
        c.create_thin(1, "8M")
        f = c.device_file(1)
        fd = os.open(f, os.O_RDWR)
        try:
            os.pwrite(fd, b"old" * 1000, 0)
            os.fsync(fd)
            assert os.pread(fd, 3, 0) == b"old" and os.fstat(fd).st_size == 8 << 20
        finally:
            os.close(fd)
        c.delete(1)
        c.create_thin(1, "16M")
        fd = os.open(f, os.O_RDONLY)
        try:
            assert os.fstat(fd).st_size == 16 << 20 and os.pread(fd, 3000, 0) == bytes(3000)
        finally:
            os.close(fd)
    finally:
        c.stop()
        c.close()
