"""The differential test's plumbing, on the host (no VM): sequences, the model's replay, the comparison
(which must see a planted difference), the experiment's rows and the space lesson's model side."""
from __future__ import annotations

import io
import os
import tempfile
from typing import Any

import pytest

from labkit.experiments import framework
from labkit.thin import Pool
from labkit.vm import diff, ops
from labkit.vm.batch import Batch, JobResult
from labkit.vm.space import model_fill, space_rows


def fake_kernel(seed: int, n_ops: int, sequence: list[ops.Op] | None = None) -> dict[str, Any]:
    """What guestjobs.replay records, made from the model itself (thin_dump XML via Pool.dump_xml)."""
    views = diff.model_replay(seed, n_ops, ops=sequence)["views"]
    record: dict[str, Any] = {"checkpoints": [], "errors": {}}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        plan = ops.plan_for()
        with Pool.create(os.path.join(d, "p"), data_size=plan.data_size, commit_interval=None) as pool:
            for i, op in enumerate(sequence or ops.generate(seed, n_ops)):
                if op.kind == "create_thin":
                    pool.create_thin(op.dev, op.size)
                elif op.kind == "create_snap":
                    pool.create_snap(op.dev, op.origin)
                elif op.kind == "write":
                    pool.device(op.dev).write(op.offset, ops.payload(seed, i, op.length))
                elif op.kind == "discard":
                    pool.device(op.dev).discard(op.offset, op.length)
                elif op.kind == "delete":
                    pool.delete(op.dev)
                else:
                    pool.commit()
                    xml = io.StringIO()
                    pool.dump_xml(xml)
                    v = next(v for v in views if v["step"] == i)
                    status = "0 131072 thin-pool " + str(pool.status()) + " 1024"
                    record["checkpoints"].append({
                        "step": i, "xml": xml.getvalue(), "status": status,
                        "thin_ls": {str(k): list(u) for k, u in v["usage"].items()},
                        "hashes": {str(k): h for k, h in v["hashes"].items()}})
    return record


def test_sequences_are_reproducible_and_varied() -> None:
    seq = ops.generate(3, 300)
    assert seq == ops.generate(3, 300) and seq != ops.generate(4, 300)
    kinds = {o.kind for o in seq}
    assert kinds == set(ops.KINDS)
    snaps = {o.dev for o in seq if o.kind == "create_snap"}
    assert any(o.origin in snaps for o in seq if o.kind == "create_snap"), "no snapshot of a snapshot"
    assert all(o.offset % ops.PAGE == 0 and o.length % ops.PAGE == 0 for o in seq)
    assert all(ops.PAGE <= o.length <= ops.MIB for o in seq if o.kind == "write")


def test_model_against_itself_matches_everywhere() -> None:
    model = diff.model_replay(5, 80)
    rows = diff.compare(5, model, fake_kernel(5, 80))
    assert {r["quantity"] for r in rows} == set(diff.QUANTITIES)
    assert all(r["match"] for r in rows), [r for r in rows if not r["match"]][:3]


def test_a_planted_difference_is_found() -> None:
    model = diff.model_replay(5, 80)
    kernel = fake_kernel(5, 80)
    cp = kernel["checkpoints"][-1]
    dev = next(iter(cp["hashes"]))
    cp["hashes"][dev][1] = "0" * 32                                     # one block reads differently
    cp["thin_ls"][dev] = [cp["thin_ls"][dev][0], cp["thin_ls"][dev][1] + 1, cp["thin_ls"][dev][2] - 1]
    cp["xml"] = cp["xml"].replace(' time="', ' time="1', 1)             # the pool's clock
    bad = {(r["quantity"], r["device"]) for r in diff.compare(5, model, kernel) if not r["match"]}
    assert {("content", dev), ("exclusive_blocks", dev), ("shared_blocks", dev), ("time", "pool")} <= bad
    content = next(r for r in diff.compare(5, model, kernel) if r["quantity"] == "content" and not r["match"])
    assert "blocks differing: [1]" in content["detail"] and content["explained"] == ""


def test_experiment_rows_keep_the_host_kernel_column(monkeypatch, tmp_path) -> None:
    import labkit.experiments.kernel_diff as kd
    from labkit.vm.runner import VMResult

    def fake(n_ops, seeds, **kw):
        batch = Batch()
        batch.vm = VMResult(0, "", 1.0, 0.5, "tcg", str(tmp_path))
        rows = [r for s in seeds for r in diff.compare(s, diff.model_replay(s, n_ops), fake_kernel(s, n_ops))]
        return diff.KernelDiff(rows, batch, 0.1, list(seeds))

    monkeypatch.setattr(kd, "kernel_diff", fake)
    df = framework.run("kernel-diff", repeat=1, root=str(tmp_path), progress=False, ops=30, seeds=2)
    assert {"model_value", "kernel_value", "quantity", "match", "kernel"} <= set(df.columns)
    assert df.kernel.nunique() == 1 and df.kernel.iloc[0] == os.uname().release   # the host's, as on every row
    summary = framework.get("kernel-diff").summarize(df)
    assert int(summary.unexplained.sum()) == 0 and set(df.seed) == {0, 1}


def test_space_lesson_model_side() -> None:
    seq = ops.space_ops(3, 4 << 20, 1 << 20)
    model = diff.model_replay(0, ops=seq, data_size=16 << 20)
    rows = space_rows(model, fake_kernel(0, 0, seq), 64 << 10)
    last = {(r["side"], r["device"]): r for r in rows if r["containers"] == 3}
    assert last[("model", "container 1")]["exclusive_bytes"] == 1 << 20
    assert last[("kernel", "pool")]["used_data_bytes"] == (4 << 20) + 3 * (1 << 20)
    assert last[("model", "image")]["exclusive_bytes"] == 1 << 20     # every container replaced those blocks
    err, queue = model_fill(True), model_fill(False)
    assert err["bytes_written"] == 4 << 20 and err["errno_name"] == "ENOSPC" and not err["queued_io"]
    assert queue["outcome"] == "error" and queue["queued_io"], queue


def test_batch_require_names_the_guest_error() -> None:
    from labkit import errors
    b = Batch()
    b["j"] = JobResult("j", False, None, 'Traceback (most recent call last):\n  File "/a/kernelpool.py", line 3, '
                                         'in delete\nOSError: [Errno 16] Device or resource busy\n', 1.0)
    with pytest.raises(errors.FailedPrecondition, match=r"Errno 16.*kernelpool.py:3 in delete"):
        b.require("j")
