import os, sys, time
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from harness import *
from folios import folio_hist
size = 256 * MIB
rows = []
with targets(size) as t:
    for name, mnt in t.items():
        dev, back = backing_of(mnt)
        print(name, dev, back)
        for a in ("rotational", "read_ahead_kb", "max_sectors_kb", "max_hw_sectors_kb", "logical_block_size",
                  "physical_block_size", "nr_requests", "scheduler", "add_random", "nomerges", "rq_affinity", "dma_alignment", "io_min", "io_opt", "max_segments", "max_segment_size"):
            try: print("  ", a, sysfs(dev, a))
            except OSError as e: print("  ", a, e)
        print("  dio", open(f"/sys/block/{os.path.basename(dev)}/loop/dio").read().strip())
        print("  ", folio_hist(back))
        os.system(f"filefrag {os.path.join(mnt,'file')} | tail -1")
    print(open("/proc/self/mountinfo").read().count("thin"))
    os.system("grep -E 'rig-' /proc/self/mountinfo | awk '{print $5, $6, $NF, $(NF-1)}'")
    paired_reads(t, size, 10, 1, "baseline-256M", rows)
    paired_reads(t, size, 10, 4, "baseline-256Mx4", rows)
save(rows, "exp1-baseline.csv")
