"""The formats are one: labkit's thin_dump XML opens in the kernel over labkit's data file, and the
kernel's thin_dump XML restores into labkit over the kernel's data file (both in the shared VM boot)."""
from __future__ import annotations

from typing import Any

import pytest

from labkit.vm import formats

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def vm_jobs(scratch: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return formats.prepare(scratch, seed=7, n_ops=80)


def test_kernel_reads_labkit_pool(vm_session) -> None:
    rep = formats.check_restored(vm_session.batch, vm_session.expect[__name__])
    assert rep["devices"] >= 3 and rep["blocks"] > 0
    assert not rep.problems, "\n".join(rep.problems)


def test_labkit_reads_kernel_pool(vm_session) -> None:
    rep = formats.check_dumped(vm_session.batch, vm_session.expect[__name__])
    assert rep["devices"] >= 3 and rep["blocks"] > 0
    assert not rep.problems, "\n".join(rep.problems)
