"""Property tests: random write / snapshot / delete / discard / commit / reopen against a bytes model."""
from __future__ import annotations

import errno
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from labkit.thin import Pool

BS = 64 << 10
NBLK = 12  # virtual blocks per device
SIZE = BS * NBLK


class PoolMachine(RuleBasedStateMachine):
    """Every device's bytes must equal the model, and check() must be clean, after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="lk-thin-prop-")
        self.path = f"{self.dir}/pool"
        self.model: dict[int, bytearray] = {}
        self.next_id = 0

    @initialize(node_capacity=st.sampled_from([4, 5, None]))  # tiny nodes grow deep trees quickly
    def make_pool(self, node_capacity) -> None:
        self.pool = Pool.create(self.path, data_size=BS * 40, node_capacity=node_capacity, commit_interval=None)

    def teardown(self) -> None:
        if hasattr(self, "pool"):
            self.pool.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _resync(self) -> None:
        # ENOSPC part-way through a write: blocks before the failing one are written (as on a disk)
        for d in self.model:
            self.model[d] = bytearray(self.pool.device(d).read(0, SIZE))

    @precondition(lambda self: len(self.model) < 6)
    @rule()
    def create(self) -> None:
        self.pool.create_thin(self.next_id, SIZE)
        self.model[self.next_id] = bytearray(SIZE)
        self.next_id += 1

    @precondition(lambda self: 0 < len(self.model) < 6)
    @rule(data=st.data())
    def snapshot(self, data) -> None:
        origin = data.draw(st.sampled_from(sorted(self.model)))
        self.pool.create_snap(self.next_id, origin)
        self.model[self.next_id] = bytearray(self.model[origin])
        self.next_id += 1

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data) -> None:
        d = data.draw(st.sampled_from(sorted(self.model)))
        self.pool.delete(d)
        del self.model[d]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), offset=st.integers(0, SIZE - 1), length=st.integers(1, 3 * BS),
          byte=st.integers(1, 255))
    def write(self, data, offset, length, byte) -> None:
        d = data.draw(st.sampled_from(sorted(self.model)))
        length = min(length, SIZE - offset)
        payload = bytes([byte]) * length
        try:
            self.pool.device(d).write(offset, payload)
        except OSError as e:
            assert e.errno == errno.ENOSPC
            self._resync()
            return
        self.model[d][offset:offset + length] = payload

    @precondition(lambda self: self.model)
    @rule(data=st.data(), offset=st.integers(0, SIZE), length=st.integers(0, SIZE))
    def discard(self, data, offset, length) -> None:
        d = data.draw(st.sampled_from(sorted(self.model)))
        length = min(length, SIZE - offset)
        self.pool.device(d).discard(offset, length)
        for vb in range(-(-offset // BS), (offset + length) // BS):
            self.model[d][vb * BS:(vb + 1) * BS] = bytes(BS)

    @rule()
    def commit(self) -> None:
        self.pool.commit()

    @rule()
    def reopen(self) -> None:
        self.pool.close()
        self.pool = Pool.open(self.path, commit_interval=None)

    @invariant()
    def matches_model_and_checks_clean(self) -> None:
        r = self.pool.check()
        assert r.ok, r.problems[:5]
        assert self.pool.devices() == sorted(self.model)
        for d, want in self.model.items():
            assert self.pool.device(d).read(0, SIZE) == want


PoolMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
TestPool = PoolMachine.TestCase


class CrashMachine(PoolMachine):
    """Drop the pool without closing at random points: reopen must show the last committed devices,
    each block holding its committed bytes or (for a block written in place after the commit, as
    dm-thin allows) its latest bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.committed: dict[int, bytes] = {}
        self.seen: dict[tuple[int, int], set[bytes]] = {}  # block contents since the last commit

    def _remember(self) -> None:
        for d, m in self.model.items():
            for vb in range(NBLK):
                self.seen.setdefault((d, vb), set()).add(bytes(m[vb * BS:(vb + 1) * BS]))

    def _committed_now(self) -> None:
        self.committed = {d: bytes(m) for d, m in self.model.items()}
        self.seen = {}

    @precondition(lambda self: self.model)
    @rule(data=st.data(), offset=st.integers(0, SIZE - 1), length=st.integers(1, 3 * BS),
          byte=st.integers(1, 255))
    def write(self, data, offset, length, byte) -> None:
        super().write(data, offset, length, byte)
        self._remember()

    @precondition(lambda self: self.model)
    @rule(data=st.data(), offset=st.integers(0, SIZE), length=st.integers(0, SIZE))
    def discard(self, data, offset, length) -> None:
        super().discard(data, offset, length)
        self._remember()

    @rule()
    def commit(self) -> None:
        self.pool.commit()
        self._committed_now()

    @rule()
    def reopen(self) -> None:
        super().reopen()  # close commits
        self._committed_now()

    @rule()
    def crash(self) -> None:
        p = self.pool
        import os
        os.close(p._mfd)
        os.close(p._dfd)
        p._closed = True
        self.pool = Pool.open(self.path, commit_interval=None)
        got = {d: self.pool.device(d).read(0, SIZE) for d in self.pool.devices()}
        assert set(got) == set(self.committed)
        # exclusive committed blocks may have been overwritten in place (dm-thin semantics):
        # compare block by block against either the committed or the latest model
        for d, data in got.items():
            for vb in range(NBLK):
                blk = data[vb * BS:(vb + 1) * BS]
                ok = blk == self.committed[d][vb * BS:(vb + 1) * BS] or blk in self.seen.get((d, vb), ())
                assert ok, (d, vb)
        self.model = {d: bytearray(b) for d, b in got.items()}
        self._committed_now()


CrashMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestCrash = CrashMachine.TestCase
