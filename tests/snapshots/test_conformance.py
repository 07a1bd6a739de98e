"""The shared conformance suite (labkit.snapshots.testing) against every registered backend.

One test per (backend, check), each with a fresh snapshotter in a fresh temp root. A backend without an
implementation, or one the host cannot run (its ``supported()`` reason), is skipped with that reason.
After each check the snapshotter is closed and nothing may stay mounted under the test's temp dir.
"""
from __future__ import annotations

import os

import pytest

from labkit import errors
from labkit._sys import mounts as sysmounts
from labkit.snapshots import backend_names, backend_status, open_snapshotter
from labkit.snapshots.testing import CHECKS, leftover_mounts

# The four (five with thin) that this machine runs must run: a skip of them here is a failure, so only a
# backend the host cannot run is left out of the grid, and it is reported once, with its reason.
_STATUS = {s.name: s for s in backend_status("/tmp")}
RUNNABLE = [b for b in backend_names() if _STATUS[b].available]
NOT_HERE = [b for b in backend_names() if not _STATUS[b].available]

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: every check mounts snapshots")]


@pytest.mark.parametrize("backend", NOT_HERE)
def test_backend_not_on_this_host(backend: str) -> None:
    pytest.skip(f"{backend}: {_STATUS[backend].reason}")


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("backend", RUNNABLE)
def test_conformance(backend: str, check: str, tmp_path) -> None:
    try:
        sn = open_snapshotter(backend, tmp_path / "store")
    except errors.Unsupported as e:
        pytest.skip(str(e))
    work = tmp_path / "work"
    work.mkdir()
    try:
        CHECKS[check](sn, work)
    finally:
        try:
            sn.close()
        finally:
            left = leftover_mounts(tmp_path)
            for target in left:          # do not leave them for the next test (or the host)
                sysmounts.umount(target, sysmounts.MNT_DETACH)
    assert not left, f"{backend}/{check} left mounts behind after close(): {left}"
