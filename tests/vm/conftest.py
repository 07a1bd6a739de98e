"""The ``vm`` marker and ONE VM boot for every selected vm test.

A boot under emulation costs tens of seconds, so tests do not boot VMs themselves. A test module that
needs the kernel defines ``vm_jobs(scratch) -> (jobs, expect)`` (jobs for :func:`labkit.vm.run_jobs`, and
whatever its host-side tests need to judge the results) and marks its tests ``vm``; the session fixture
``vm_session`` collects the jobs of every module that has a selected ``vm`` test, boots once, runs them
all, and hands each module its results (``vm_session.batch``) and ``vm_session.expect[module name]``.

vm tests are skipped, with the reason, only when qemu, a kernel image with dm-thin or virtme-ng is
truly missing (the reason carries the install command).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from labkit.vm import VM, Batch, requirements, run_jobs

REQ = requirements()
VM_SKIP = "; ".join(REQ.missing) if not REQ.ok else None

_PROVIDERS = pytest.StashKey[dict]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: runs in (the results of) a qemu VM with Debian's kernel and dm-thin")


def pytest_collection_finish(session: pytest.Session) -> None:
    providers: dict[str, Callable[[str], tuple[list[dict[str, Any]], Any]]] = {}
    for item in session.items:
        mod = getattr(item, "module", None)
        if item.get_closest_marker("vm") and mod is not None and hasattr(mod, "vm_jobs"):
            providers[mod.__name__] = mod.vm_jobs
    session.config.stash[_PROVIDERS] = providers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Inside the VM (the guest's conformance run, two workers): the longest check first, so that one worker
    spends the run on it while the other takes all the rest (otherwise it starts halfway down a worker's
    share and the run waits for it at the end)."""
    if os.environ.get("LABKIT_VM") == "1":
        items.sort(key=lambda item: "128_layers_mount" not in item.nodeid)


@dataclass
class VMSession:
    """The one boot's results: ``batch`` (job name -> result), ``expect`` per module, timings."""

    batch: Batch
    expect: dict[str, Any] = field(default_factory=dict)
    host_seconds: float = 0.0


@pytest.fixture(scope="session")
def vm_session(request: pytest.FixtureRequest) -> Iterator[VMSession]:
    if VM_SKIP:
        pytest.skip(f"no VM here: {VM_SKIP}")
    providers = request.config.stash.get(_PROVIDERS, {})
    scratch = tempfile.mkdtemp(prefix="labkit-vmtest-", dir="/var/tmp")
    t0 = time.monotonic()
    try:
        jobs: list[dict[str, Any]] = []
        expect: dict[str, Any] = {}
        for name, provider in sorted(providers.items()):
            sub = os.path.join(scratch, name.rpartition(".")[2])
            os.makedirs(sub)
            j, e = provider(sub)
            jobs += j
            expect[name] = e
        timeout = float(os.environ.get("LABKIT_VM_TEST_TIMEOUT", "2400"))
        batch = run_jobs(jobs, scratch=scratch, vm=VM(timeout=timeout))
        session = VMSession(batch, expect, time.monotonic() - t0)
        print(f"\nlabkit vm tests: one boot, {len(jobs)} jobs, {session.host_seconds:.0f} s "
              f"(boot {batch.vm.boot_seconds or 0:.0f} s, {batch.vm.accel})")
        yield session
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
