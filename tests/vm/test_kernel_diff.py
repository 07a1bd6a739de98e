"""labkit's model against the kernel's dm-thin: one random sequence, compared at every commit.

The kernel side runs in the shared VM boot (conftest.py); the model side runs here. Small on purpose
(``ops=60, seeds=1``): ``labkit bench kernel-diff --param ops=300 --param seeds=3`` is the long run.
"""
from __future__ import annotations

from typing import Any

import pytest

from labkit.vm.diff import QUANTITIES, diff_from_batch, replay_jobs

pytestmark = [pytest.mark.vm, pytest.mark.slow]

SEEDS, OPS = [0], 60


def vm_jobs(scratch: str) -> tuple[list[dict[str, Any]], None]:
    return replay_jobs(SEEDS, OPS), None


@pytest.fixture(scope="module")
def result(vm_session):
    return diff_from_batch(vm_session.batch, SEEDS, OPS)


def test_every_quantity_was_compared(result) -> None:
    seen = {r["quantity"] for r in result.rows}
    assert seen == set(QUANTITIES), f"not compared: {set(QUANTITIES) - seen}"
    steps = {r["step"] for r in result.rows}
    assert len(steps) >= 3, f"too few commit points: {sorted(steps)}"
    devices = {r["device"] for r in result.rows if r["device"] != "pool"}
    assert len(devices) >= 3, f"too few devices: {devices}"
    shared = [r for r in result.rows if r["quantity"] == "shared_blocks" and r["kernel"]]
    assert shared, "no device ever shared a block: the sequence never exercised snapshots"


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_model_equals_kernel(result, quantity: str) -> None:
    bad = [r for r in result.unexplained if r["quantity"] == quantity]
    assert not bad, (f"{len(bad)} unexplained differences in {quantity}, first: "
                     + "; ".join(f"seed {r['seed']} step {r['step']} dev {r['device']}: model {r['model']} "
                                 f"kernel {r['kernel']} {r['detail']}" for r in bad[:3]))
