"""SIGKILL a process that writes, snapshots, deletes, discards and commits, over and over.

After each kill the pool must reopen, pass check(), be at the last transaction the child reported (or
the one it was committing), and hold every write committed before the kill. A block whose committed
data block was exclusive may also hold a write issued after the commit (dm-thin writes exclusive
blocks in place: only the mappings are transactional), so such later patterns are accepted too.
"""
from __future__ import annotations

import os
import random
import signal
import struct
import time

import pytest

from labkit.thin import Pool

BS = 64 << 10
NBLK = 8
KILLS = 60


def pattern(key: tuple[int, int]) -> bytes:
    return struct.pack("<QQ", *key) * (BS // 16)


def key_of(block: bytes) -> tuple[int, int] | None:
    if block == bytes(BS):
        return None
    k = struct.unpack_from("<QQ", block)
    assert block == pattern(k), "torn or foreign block content"
    return k


def script(seed: int, model: dict[int, list]) -> list[tuple]:
    """The child's deterministic operations; ``model`` (dev -> block keys) is advanced as a side effect
    only in a copy, so the parent can replay the same list."""
    rnd = random.Random(seed)
    devs = {d: list(b) for d, b in model.items()}
    ops: list[tuple] = []
    for i in range(8000):  # ~0.7 s of work: the kill (at most 0.25 s in) lands mid-way
        r = rnd.random()
        ids = sorted(devs)
        if r < 0.08 and len(devs) < 5:
            new = max(ids) + 1
            o = rnd.choice(ids)
            ops.append(("snap", new, o))
            devs[new] = list(devs[o])
        elif r < 0.12 and len(devs) > 1:
            d = rnd.choice(ids)
            ops.append(("delete", d))
            del devs[d]
        elif r < 0.2:
            d = rnd.choice(ids)
            mapped = [vb for vb, k in enumerate(devs[d]) if k is not None]
            if mapped:
                vb = rnd.choice(mapped)
                ops.append(("discard", d, vb))
                devs[d][vb] = None
        elif r < 0.35:
            ops.append(("commit",))
        else:
            d, vb = rnd.choice(ids), rnd.randrange(NBLK)
            ops.append(("write", d, vb, (seed, i)))
            devs[d][vb] = (seed, i)
    return ops


def child(path: str, seed: int, model: dict[int, list], wfd: int) -> None:
    pool = Pool.open(path, commit_interval=None)
    c = 0
    for op in script(seed, model):
        if op[0] == "write":
            pool.device(op[1]).write(op[2] * BS, pattern(op[3]))
        elif op[0] == "snap":
            pool.create_snap(op[1], op[2])
        elif op[0] == "delete":
            pool.delete(op[1])
        elif op[0] == "discard":
            pool.device(op[1]).discard(op[2] * BS, BS)
        else:
            tid = pool.commit()
            c += 1
            os.write(wfd, f"{c} {tid}\n".encode())  # reported only once durable
    os.write(wfd, b"done\n")


def replay(seed: int, model: dict[int, list]):
    """States after each commit: states[c] = model; late[c] = {(dev, vb): keys written after commit c}."""
    ops = script(seed, model)
    cur = {d: list(b) for d, b in model.items()}
    states = [{d: list(b) for d, b in cur.items()}]
    writes_after: list[list[tuple]] = [[]]
    for op in ops:
        if op[0] == "write":
            cur[op[1]][op[2]] = op[3]
            writes_after[-1].append(op)
        elif op[0] == "snap":
            cur[op[1]] = list(cur[op[2]])
        elif op[0] == "delete":
            del cur[op[1]]
        elif op[0] == "discard":
            cur[op[1]][op[2]] = None
        else:
            states.append({d: list(b) for d, b in cur.items()})
            writes_after.append([])
    return states, writes_after


def read_model(pool: Pool) -> dict[int, list]:
    return {d: [key_of(pool.device(d).read(vb * BS, BS)) for vb in range(NBLK)] for d in pool.devices()}


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path):
    path = str(tmp_path / "pool")
    with Pool.create(path, data_size=BS * 128, node_capacity=6) as p:
        p.create_thin(0, BS * NBLK)
        tid0 = p.transaction_id
    model = {0: [None] * NBLK}
    rnd = random.Random(1234)
    reached = []
    for kill in range(KILLS):
        seed = 1000 + kill
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                os.close(rfd)
                child(path, seed, model, wfd)
            except BaseException:  # noqa: BLE001 - the forked child reports and exits, never returns
                import traceback
                traceback.print_exc()
                code = 1
            os._exit(code)
        os.close(wfd)
        time.sleep(rnd.uniform(0.005, 0.25))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(rfd, "rb") as f:
            lines = f.read().decode().split()
        assert "done" not in lines, "the child finished before the kill: give it more work"
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        reports = [(int(c), int(t)) for c, t in zip(lines[0::2], lines[1::2])]
        c_last, tid_last = reports[-1] if reports else (0, tid0)

        states, writes_after = replay(seed, model)
        with Pool.open(path, commit_interval=None) as pool:
            r = pool.check()
            assert r.ok, (kill, r.problems[:5])
            tid = pool.transaction_id
            assert tid in (tid_last, tid_last + 1), (kill, tid, tid_last)
            c = c_last if tid == tid_last else c_last + 1
            want = states[c]
            got = read_model(pool)
            assert sorted(got) == sorted(want), (kill, c)
            late = {}
            for later in writes_after[c:c + 2]:
                for _w, d, vb, k in later:
                    late.setdefault((d, vb), set()).add(k)
            for d in want:
                for vb in range(NBLK):
                    assert got[d][vb] == want[d][vb] or got[d][vb] in late.get((d, vb), ()), (kill, d, vb)
            model = got
            tid0 = tid
        reached.append(c_last)
    assert sum(1 for c in reached if c > 0) > KILLS // 2  # most kills came after some commits
