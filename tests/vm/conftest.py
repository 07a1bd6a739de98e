"""The ``vm`` marker and ONE VM boot for every selected vm test.

A boot under emulation costs tens of seconds, so tests do not boot VMs themselves. A test module that
needs the kernel defines ``vm_jobs(scratch) -> (jobs, expect)`` (jobs for :func:`labkit.vm.run_jobs`, and
whatever its host-side tests need to judge the results) and marks its tests ``vm``; the session fixture
``vm_session`` collects the jobs of every module that has a selected ``vm`` test, boots once, runs them
all, and hands each module its results (``vm_session.batch``) and ``vm_session.expect[module name]``.

The boot starts as soon as collection ends, in a thread of its own at a low CPU priority (nice 10), so
the emulated guest (about 3.5 minutes of two busy vCPUs under TCG) runs on the CPU the host-side tests
leave idle — they use about one of this machine's two — and ``vm_session`` only waits for what is left
of it. ``LABKIT_VM_BACKGROUND=0`` boots when the first vm test needs it instead (as pytest-xdist workers
always do: each would otherwise boot its own). A session that ends before (``-x``, Ctrl-C) kills the VM.

vm tests are skipped, with the reason, only when qemu, a kernel image with dm-thin or virtme-ng is
truly missing (the reason carries the install command).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from labkit.vm import VM, Batch, kill_running, requirements, run_jobs

REQ = requirements()
VM_SKIP = "; ".join(REQ.missing) if not REQ.ok else None

_PROVIDERS = pytest.StashKey[dict]()
_BACKGROUND = pytest.StashKey["_Background"]()
#: the boot's CPU priority when it runs beside the host-side tests
NICE = 10


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: runs in (the results of) a qemu VM with Debian's kernel and dm-thin")


def pytest_collection_finish(session: pytest.Session) -> None:
    providers: dict[str, Callable[[str], tuple[list[dict[str, Any]], Any]]] = {}
    for item in session.items:
        mod = getattr(item, "module", None)
        if item.get_closest_marker("vm") and mod is not None and hasattr(mod, "vm_jobs"):
            providers[mod.__name__] = mod.vm_jobs
    session.config.stash[_PROVIDERS] = providers
    background = os.environ.get("LABKIT_VM_BACKGROUND", "1") != "0" and "PYTEST_XDIST_WORKER" not in os.environ
    if providers and not VM_SKIP and background and os.environ.get("LABKIT_VM") != "1":
        session.config.stash[_BACKGROUND] = _Background(providers)


def pytest_sessionfinish(session: pytest.Session) -> None:
    bg = session.config.stash.get(_BACKGROUND, None)
    if bg is not None:
        bg.stop()


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


def _boot(providers: dict[str, Callable[[str], tuple[list[dict[str, Any]], Any]]], scratch: str,
          on_output: Callable[[str], None] | None = None) -> VMSession:
    """Collect every module's jobs, boot once, run them all."""
    t0 = time.monotonic()
    jobs: list[dict[str, Any]] = []
    expect: dict[str, Any] = {}
    for name, provider in sorted(providers.items()):
        sub = os.path.join(scratch, name.rpartition(".")[2])
        os.makedirs(sub)
        j, e = provider(sub)
        jobs += j
        expect[name] = e
    timeout = float(os.environ.get("LABKIT_VM_TEST_TIMEOUT", "2400"))
    batch = run_jobs(jobs, scratch=scratch, vm=VM(timeout=timeout), on_output=on_output)
    return VMSession(batch, expect, time.monotonic() - t0)


class _Background:
    """The one boot, started when collection ends and run in a thread at nice :data:`NICE`: the thread's
    priority is what the processes it starts (watcher, vng, qemu) inherit. The guest's output is kept in
    ``lines`` rather than printed: printed from a thread it would land in whichever test is capturing."""

    def __init__(self, providers: dict[str, Callable[[str], tuple[list[dict[str, Any]], Any]]]) -> None:
        self.scratch = tempfile.mkdtemp(prefix="labkit-vmtest-", dir="/var/tmp")
        self.session: VMSession | None = None
        self.error: BaseException | None = None
        self.lines: list[str] = []
        self.waited = 0.0
        self.thread = threading.Thread(target=self._run, args=(providers,), name="labkit-vm-tests", daemon=True)
        self.thread.start()

    def _run(self, providers: dict[str, Callable[[str], tuple[list[dict[str, Any]], Any]]]) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except OSError:
            pass
        try:
            self.session = _boot(providers, self.scratch, on_output=self.lines.append)
        except BaseException as e:  # noqa: BLE001 - handed to the vm tests, which report it
            self.error = e

    def wait(self) -> VMSession:
        t0 = time.monotonic()
        self.thread.join()
        self.waited = time.monotonic() - t0
        if self.error is not None:
            tail = " | ".join(self.lines[-5:])
            raise RuntimeError(f"the VM tests' boot failed: {self.error} (guest's last lines: {tail})") from self.error
        assert self.session is not None
        return self.session

    def stop(self) -> None:
        if self.thread.is_alive():            # the session ended first: kill the VM, which ends the thread
            kill_running()
            self.thread.join(60)
        shutil.rmtree(self.scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def vm_session(request: pytest.FixtureRequest) -> Iterator[VMSession]:
    if VM_SKIP:
        pytest.skip(f"no VM here: {VM_SKIP}")
    bg = request.config.stash.get(_BACKGROUND, None)
    if bg is not None:
        session = bg.wait()
        print(f"\nlabkit vm tests: one boot beside the host tests (nice {NICE}), {len(session.batch)} jobs, "
              f"{session.host_seconds:.0f} s (boot {session.batch.vm.boot_seconds or 0:.0f} s, "
              f"{session.batch.vm.accel}); the tests waited {bg.waited:.0f} s for it")
        yield session
        return
    providers = request.config.stash.get(_PROVIDERS, {})
    scratch = tempfile.mkdtemp(prefix="labkit-vmtest-", dir="/var/tmp")
    try:
        session = _boot(providers, scratch)
        print(f"\nlabkit vm tests: one boot, {len(session.batch)} jobs, {session.host_seconds:.0f} s "
              f"(boot {session.batch.vm.boot_seconds or 0:.0f} s, {session.batch.vm.accel})")
        yield session
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
