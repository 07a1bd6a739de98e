"""Level 08's space lesson on the kernel, in the shared VM boot: space per container and pool exhaustion
agree with the model (the notebook itself runs with ``use_vm=False`` in the suite, so this is where its
kernel side is checked; tests/test_notebooks.py)."""
from __future__ import annotations

import errno
from typing import Any

import pytest

from labkit.thin.records import Status
from labkit.vm import space

pytestmark = [pytest.mark.vm, pytest.mark.slow]

#: level 08's small parameters in tests/test_notebooks.py (2 containers, a 4 MiB image, 1 MiB writes each)
SIZES = {"containers": 2, "image_bytes": 4 << 20, "write_bytes": 1 << 20}


def vm_jobs(scratch: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return space.space_jobs(**SIZES), SIZES


def test_space_per_container_is_the_same_on_both(vm_session) -> None:
    sizes = vm_session.expect[__name__]
    rows, compared, last = space.space_compare(vm_session.batch, **sizes)
    wrong = [r for r in compared if not r["match"]]
    assert compared and not wrong, wrong[:5]
    final = {(r["side"], r["device"]): r for r in rows if r["containers"] == sizes["containers"]}
    for (side, device), r in final.items():
        if side == "kernel":
            assert {**r, "side": "model"} == final[("model", device)], (device, r, final[("model", device)])
    assert final[("kernel", "container 1")]["exclusive_bytes"] == sizes["write_bytes"]
    assert final[("kernel", "pool")]["used_data_bytes"] == sizes["image_bytes"] + sizes["containers"] * sizes[
        "write_bytes"]
    assert last["model"] and last["kernel"]


def test_a_full_pool_fails_the_write_or_holds_it(vm_session) -> None:
    """error_if_no_space: ENOSPC after exactly the pool's 4 MiB, as the model; queue_if_no_space: the
    kernel holds the write (the model fails it and says the kernel would queue) and finishes it once the
    pool grows."""
    k_err, k_queue = vm_session.batch.require("fill-error_if_no_space"), vm_session.batch.require(
        "fill-queue_if_no_space")
    m_err, m_queue = space.model_fill(True), space.model_fill(False)
    assert k_err["outcome"] == m_err["outcome"] == "error", (k_err, m_err)
    assert k_err["bytes_written"] == m_err["bytes_written"] == 4 << 20
    assert k_err["errno"] == m_err["errno"] == errno.ENOSPC
    held = Status.parse(k_queue["status"])
    assert k_queue["outcome"] == "blocked" and held.mode == "out_of_data_space", k_queue
    assert held.used_data_blocks == held.total_data_blocks and not held.error_if_no_space
    assert k_queue["after_grow_exit"] == 0 and k_queue["after_grow_bytes_written"] == 5 << 20, k_queue
    assert m_queue["outcome"] == "error" and m_queue["queued_io"], m_queue
