"""Noise of the paired ratio: one pass of 256 MiB per op vs 4 passes (1 GiB) per op, interleaved rounds."""
import os, sys, statistics
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from harness import *
size = 256 * MIB
R = int(sys.argv[1]) if len(sys.argv) > 1 else 30
rows = []
with targets(size) as t:
    res = {1: [], 4: []}
    for r in range(R):
        for inner in ((1, 4) if r % 2 else (4, 1)):
            order = ["loop", "thin"] if (r // 2) % 2 == 0 else ["thin", "loop"]
            v = {}
            for n in order:
                p = os.path.join(t[n], "file")
                v[n] = inner * size / MIB / sum(thin_io._seq_read(p, size) for _ in range(inner))
            res[inner].append(v["thin"] / v["loop"])
            rows.append({"variant": f"passes={inner}", "round": r, "thin_mib_s": v["thin"], "loop_mib_s": v["loop"],
                         "ratio": v["thin"] / v["loop"], "load_1m": load()})
    for inner, rs in res.items():
        q = statistics.quantiles(rs, n=4)
        # stability of a 6-repetition median (as the bench reports): medians of consecutive blocks of 6
        meds = [statistics.median(rs[i:i + 6]) for i in range(0, len(rs) - 5, 6)]
        print(f"passes={inner}: median {statistics.median(rs):.3f} IQR {q[0]:.3f}-{q[2]:.3f} min-max {min(rs):.3f}-{max(rs):.3f} "
              f"sd {statistics.stdev(rs):.3f}; medians of 6: {[round(m, 3) for m in meds]} load {load()}")
save(rows, "exp6-passes.csv")
