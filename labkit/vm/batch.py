"""Run several jobs in ONE VM boot (a boot costs tens of seconds under emulation) and read their results.

>>> res = run_jobs([{"name": "info", "job": "kernel_info"}])        # doctest: +SKIP
>>> res["info"].result["targets"]["thin-pool"]                       # doctest: +SKIP
'1.22.0'
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import errors
from .runner import VM, VMResult

__all__ = ["JobResult", "Batch", "run_jobs"]


@dataclass(frozen=True)
class JobResult:
    """One job's outcome: ``ok``, its JSON ``result``, the guest's traceback as ``error``, ``seconds``
    (guest wall time: not comparable with the host's under emulation)."""

    name: str
    ok: bool
    result: Any
    error: str | None
    seconds: float


class Batch(dict):
    """{job name: :class:`JobResult`} plus the :class:`~labkit.vm.runner.VMResult` of the boot (``.vm``)
    and the scratch directory (``.scratch``)."""

    vm: VMResult
    scratch: str

    def require(self, name: str) -> Any:
        """The result of job ``name``, or :class:`~labkit.errors.FailedPrecondition` with the guest's error."""
        job = self.get(name)
        if job is None:
            tail = " | ".join(self.vm.lines[-5:]) if hasattr(self, "vm") else ""
            raise errors.FailedPrecondition(f"VM job {name!r}", f"left no result (guest output ends: {tail})")
        if not job.ok:
            raise errors.FailedPrecondition(f"VM job {name!r}", f"failed in the guest: {where(job.error or '')}")
        return job.result


def where(tb: str) -> str:
    """A guest traceback in one line: the error and the innermost frame.

    >>> where('Traceback (most recent call last):\\n  File "/x/kernelpool.py", line 9, in delete\\n'
    ...       '    self.message(m)\\n  File "/x/dm.py", line 60, in _ioctl\\nOSError: [Errno 16] busy\\n')
    'OSError: [Errno 16] busy (at dm.py:60 in _ioctl < kernelpool.py:9 in delete)'
    """
    lines = tb.strip().splitlines()
    frames = [ln.strip() for ln in lines if ln.strip().startswith('File "')]
    last = lines[-1] if lines else "?"
    if not frames:
        return last
    at = []
    for frame in frames[-2:]:
        parts = frame.split('"')
        rest = parts[2].replace(", line ", ":").replace(", in ", " in ").strip() if len(parts) > 2 else ""
        at.append(f"{os.path.basename(parts[1])}{rest}")
    return f"{last} (at {' < '.join(reversed(at))})"


def run_jobs(jobs: Sequence[dict[str, Any]], *, vm: VM | None = None, scratch: str | None = None,
             on_output: Callable[[str], None] | None = None, timeout: float | None = None) -> Batch:
    """Boot once, run ``jobs`` (see :mod:`labkit.vm.guest`) in order, power off, return their results.

    ``scratch`` (default: a new directory under /var/tmp) is shared with the guest: jobs may read inputs
    from it and leave files in it. A job that fails does not stop the others."""
    vm = vm or VM()
    scratch = os.path.abspath(scratch or tempfile.mkdtemp(prefix="labkit-vm-", dir="/var/tmp"))
    results = os.path.join(scratch, "results")
    os.makedirs(results, exist_ok=True)
    spec = os.path.join(scratch, "jobs.json")
    with open(spec, "w") as f:
        json.dump({"results": results, "jobs": list(jobs)}, f)
    cmd = f"{shlex.quote(sys.executable)} -m labkit.vm.guest {shlex.quote(spec)}"
    vres = vm.run(cmd, scratch=scratch, on_output=on_output, timeout=timeout)
    batch = Batch()
    batch.vm = vres
    batch.scratch = scratch
    for job in jobs:
        path = os.path.join(results, f"{job['name']}.json")
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError):
            continue
        batch[job["name"]] = JobResult(job["name"], bool(d.get("ok")), d.get("result"), d.get("error"),
                                       float(d.get("seconds") or 0.0))
    return batch
