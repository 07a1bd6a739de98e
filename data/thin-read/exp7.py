"""thin's loop device with direct I/O (LOOP_SET_DIRECT_IO): reads go to the daemon instead of the FUSE page cache."""
import os, sys, fcntl
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from harness import *
size = 256 * MIB
rows = []
def set_dio(dev, on):
    fd = os.open(dev, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, 0x4C08, 1 if on else 0)
    finally:
        os.close(fd)
    return open(f"/sys/block/{os.path.basename(dev)}/loop/dio").read().strip()
with targets(size) as t:
    tdev, _ = backing_of(t["thin"])
    paired_reads(t, size, 12, 2, "base", rows)
    print("dio", set_dio(tdev, True))
    paired_reads(t, size, 12, 2, "thin loop dio=1", rows)
    print("dio", set_dio(tdev, False))
    paired_reads(t, size, 12, 2, "base again", rows)
save(rows, "exp7-dio.csv")
