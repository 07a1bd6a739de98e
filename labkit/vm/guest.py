"""The VM side of a batch: ``python -m labkit.vm.guest JOBS.json`` runs every job of the file in this one
process (imports over 9p under emulation are slow: a batch pays for them once) and writes each job's
outcome to ``<results dir>/<job name>.json`` as ``{"ok", "result", "error", "seconds"}``.

A job is ``{"name": ..., "job": <a name in labkit.vm.guestjobs.JOBS>, "kwargs": {...}}`` or
``{"name": ..., "pytest": [args...]}`` (pytest runs in-process; its exit code is the result). Progress
goes to stdout as ``labkit-vm: job NAME ...`` lines.

>>> import json, tempfile, os
>>> d = tempfile.mkdtemp(); f = os.path.join(d, "jobs.json")
>>> json.dump({"results": d, "jobs": [{"name": "n", "job": "nonexistent"}]}, open(f, "w"))
>>> main([f]); json.load(open(os.path.join(d, "n.json")))["ok"]      # doctest: +ELLIPSIS
labkit-vm: job n ...
1
False
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from .guestjobs import JOBS


def _run_job(job: dict[str, Any]) -> Any:
    if "pytest" in job:
        import pytest  # only a pytest job needs it (a test dependency, not labkit's)
        return int(pytest.main(list(job["pytest"])))
    fn = JOBS.get(job.get("job", ""))
    if fn is None:
        raise KeyError(f"unknown job {job.get('job')!r}; known: {', '.join(sorted(JOBS))}")
    return fn(**job.get("kwargs", {}))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the jobs of the file named in ``argv``; 0 when all succeeded, 1 otherwise."""
    args = list(sys.argv[1:] if argv is None else argv)
    with open(args[0]) as f:
        spec = json.load(f)
    results = spec["results"]
    os.makedirs(results, exist_ok=True)
    failed = 0
    for job in spec["jobs"]:
        name = job["name"]
        print(f"labkit-vm: job {name} started", flush=True)
        t0 = time.monotonic()
        out: dict[str, Any] = {"ok": False, "result": None, "error": None}
        try:
            out["result"] = _run_job(job)
            out["ok"] = True
        except BaseException as e:   # reported to the host; the next job still runs
            out["error"] = "".join(traceback.format_exception(e))[-4000:]
            print(f"labkit-vm: job {name} failed: {type(e).__name__}: {e}", flush=True)
            for line in out["error"].rstrip().splitlines():
                print(f"labkit-vm:   {line}", flush=True)
            if isinstance(e, KeyboardInterrupt):
                raise
        out["seconds"] = time.monotonic() - t0
        failed += not out["ok"]
        tmp = os.path.join(results, f".{name}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, os.path.join(results, f"{name}.json"))
        print(f"labkit-vm: job {name} {'done' if out['ok'] else 'FAILED'} in {out['seconds']:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
