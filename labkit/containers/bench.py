"""Start-to-exit latency of ``/bin/true``: labkit's runtime against runc (and crun where it can run).

Each runtime does the same work: new PID, network, IPC, UTS and mount namespaces, /proc, /dev, /sys, a
cgroup, then exec ``/bin/true``, wait for it and delete the container (``runc run`` = create + start +
wait + delete; labkit = ``Runtime.run`` + ``Container.remove``). The first ``warmup`` runs of each
runtime are marked ``warmup=True`` (drop them before taking medians).

crun refuses the hybrid cgroup layout ("cgroups in hybrid mode not supported"); labkit runs it in a
private mount namespace where ``/sys/fs/cgroup/unified`` is unmounted, which hides cgroup2 from it. A
runtime that is missing or fails yields no rows; the reason is in ``df.attrs["skipped"]``.

>>> df = start_latency("/tmp/lk-bench", "/tmp/rootfs", repeat=20)         # doctest: +SKIP
>>> df[~df.warmup].groupby("runtime").seconds.median()                    # doctest: +SKIP
runtime
labkit    0.012
runc      0.035
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from . import oci

_CLI_DRIVER = r"""
import json, subprocess, sys, time
argv_base, repeat = json.loads(sys.argv[1]), int(sys.argv[2])
if len(sys.argv) > 3:
    subprocess.run(["umount", sys.argv[3]], check=True)
out = []
for i in range(repeat):
    argv = [a.replace("{i}", str(i)) for a in argv_base]
    t = time.perf_counter()
    p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if p.returncode:
        print(json.dumps({"error": p.stderr.decode(errors="replace").strip().splitlines()[-1:]}))
        sys.exit(0)
    out.append(dt)
print(json.dumps({"seconds": out}))
"""


def _time_cli(argv: list[str], n: int, *, hide_cgroup2: str | None = None) -> list[float]:
    cmd = [sys.executable, "-S", "-c", _CLI_DRIVER, json.dumps(argv), str(n)]
    if hide_cgroup2:
        cmd = ["unshare", "-m", "--propagation", "private", "--", *cmd, hide_cgroup2]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError((p.stderr.strip().splitlines() or ["driver failed"])[-1])
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if "error" in res:
        raise RuntimeError(" ".join(res["error"]) or "failed")
    return res["seconds"]


def _labkit(state: str, rootfs: str, n: int) -> list[float]:
    from .runtime import Runtime
    out = []
    with Runtime(state) as rt:
        rt._spawner.request({"op": "ping"})          # start the spawner outside the timing
        for _ in range(n):
            t = time.perf_counter()
            c = rt.run(rootfs, ["/bin/true"])
            code = c.exit_code
            c.remove()
            out.append(time.perf_counter() - t)
            if code != 0:
                raise RuntimeError(f"/bin/true exited {code}: {c.logs().strip()}")
    return out


def start_latency(runtime_dir: str, rootfs: str, repeat: int = 20, *, warmup: int = 2,
                  runtimes: tuple[str, ...] = ("labkit", "runc", "crun")) -> Any:
    """Measure ``repeat`` start-to-exit runs of ``/bin/true`` per runtime (after ``warmup`` more).

    Returns a DataFrame with columns ``runtime, repeat, warmup, seconds``; ``df.attrs["skipped"]``
    maps a runtime that could not run to the reason. ``runtime_dir`` holds state and bundles.
    """
    import pandas as pd
    os.makedirs(runtime_dir, exist_ok=True)
    bundle = os.path.join(runtime_dir, "bundle")
    oci.write_bundle(bundle, rootfs, ["/bin/true"], hostname="bench")
    n = warmup + repeat
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    tag = f"lkbench{os.getpid()}"
    for name in runtimes:
        try:
            if name == "labkit":
                secs = _labkit(os.path.join(runtime_dir, "labkit"), rootfs, n)
            else:
                exe = shutil.which(name)
                if exe is None:
                    raise RuntimeError(f"{name} not installed (apt-get install {name})")
                argv = [exe, "--root", os.path.join(runtime_dir, name), "run", "--bundle", bundle,
                        f"{tag}-{name}-{{i}}"]
                hide = None
                if name == "crun" and os.path.ismount("/sys/fs/cgroup/unified"):
                    hide = "/sys/fs/cgroup/unified"
                secs = _time_cli(argv, n, hide_cgroup2=hide)
        except Exception as e:  # noqa: BLE001 - one runtime failing must not lose the others
            skipped[name] = str(e)
            continue
        rows += [{"runtime": name, "repeat": i, "warmup": i < warmup, "seconds": s} for i, s in enumerate(secs)]
    df = pd.DataFrame(rows, columns=["runtime", "repeat", "warmup", "seconds"])
    df.attrs["skipped"] = skipped
    return df


def medians(df: Any) -> dict[str, float]:
    """Median seconds per runtime, warm-up runs dropped."""
    return {k: float(v) for k, v in df[~df.warmup].groupby("runtime").seconds.median().items()}


if __name__ == "__main__":      # python -m labkit.containers.bench ROOTFS [REPEAT]
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        frame = start_latency(d, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20)
        print(medians(frame), frame.attrs["skipped"])
