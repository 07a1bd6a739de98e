"""Paired A/B rig for thin vs loop sequential O_DIRECT reads (uses labkit.experiments.thin_io's targets)."""
from __future__ import annotations

import contextlib
import csv
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from labkit.experiments import thin_io  # noqa: E402

MIB = 1 << 20


def load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def backing_of(mnt: str) -> tuple[str, str]:
    """(loop device, backing file) of the ext4 mounted at mnt."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == mnt:
                src = parts[parts.index("-") + 2]
                name = os.path.basename(src)
                with open(f"/sys/block/{name}/loop/backing_file") as b:
                    return src, b.read().strip()
    raise LookupError(mnt)


@contextlib.contextmanager
def targets(size: int, root: str = os.environ.get("THINREAD_SCRATCH", "/var/tmp/thinread") + "/rig"):
    os.makedirs(root, exist_ok=True)
    base = tempfile.mkdtemp(prefix="rig-", dir=root)
    try:
        with contextlib.ExitStack() as st:
            t = {"loop": st.enter_context(thin_io._loop_target(base, size)),
                 "thin": st.enter_context(thin_io._thin_target(base, size))}
            block = random.Random(42).randbytes(MIB)
            for name, mnt in t.items():
                thin_io._seq_write(os.path.join(mnt, "file"), size, block)
                thin_io._seq_read(os.path.join(mnt, "file"), size)
            yield t
    finally:
        shutil.rmtree(base, ignore_errors=True)


def sysfs(dev: str, attr: str, value: str | None = None) -> str:
    p = f"/sys/block/{os.path.basename(dev)}/queue/{attr}"
    if value is not None:
        with open(p, "w") as f:
            f.write(value)
    with open(p) as f:
        return f.read().strip()


def paired_reads(t: dict[str, str], size: int, rounds: int, inner: int = 1, label: str = "",
                 rows: list | None = None) -> dict[str, float]:
    """rounds x (thin, loop alternated) seq_read of the file, inner times each; ratio per round."""
    rs = []
    mb = {"thin": [], "loop": []}
    for r in range(rounds):
        order = ["loop", "thin"] if r % 2 == 0 else ["thin", "loop"]
        res = {}
        for name in order:
            p = os.path.join(t[name], "file")
            secs = sum(thin_io._seq_read(p, size) for _ in range(inner))
            res[name] = size * inner / MIB / secs
            mb[name].append(res[name])
        rs.append(res["thin"] / res["loop"])
        if rows is not None:
            rows.append({"variant": label, "round": r, "thin_mib_s": res["thin"], "loop_mib_s": res["loop"],
                         "ratio": rs[-1], "load_1m": load(), "file_mib": size // MIB, "inner": inner})
    q = statistics.quantiles(rs, n=4)
    out = {"variant": label, "ratio_median": statistics.median(rs), "q25": q[0], "q75": q[2], "min": min(rs),
           "max": max(rs), "thin_mib_s": statistics.median(mb["thin"]), "loop_mib_s": statistics.median(mb["loop"]),
           "rounds": rounds, "load": load()}
    print("{variant:28s} ratio {ratio_median:.3f} ({q25:.3f}-{q75:.3f}, {min:.3f}-{max:.3f}) thin {thin_mib_s:.0f} "
          "loop {loop_mib_s:.0f} MiB/s n={rounds} load {load}".format(**out), flush=True)
    return out


def save(rows: list[dict], name: str) -> None:
    if not rows:
        return
    p = os.environ.get("THINREAD_SCRATCH", "/var/tmp/thinread") + f"/{name}"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("saved", p)
