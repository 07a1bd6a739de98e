import os, sys, time
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from harness import *
from folios import folio_hist
import patchfs
from labkit.thin import exportfs
wb = sys.argv[1] == "wb"
exportfs.WRITEBACK_CACHE = wb
size = 256 * MIB
rows = []
def short(h): return {k: h[k] for k in ("cached_pages", "order0_pages", "pages_by_folio_kib")}
with targets(size) as t:
    dev, back = backing_of(t["thin"])
    print("writeback_cache", wb, "after write+read:", short(folio_hist(back)), load())
    paired_reads(t, size, 10, 2, f"wb={wb} written", rows)
    fd = os.open(back, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    print("after DONTNEED:", short(folio_hist(back)))
    thin_io._seq_read(os.path.join(t["thin"], "file"), size)
    print("after re-read:", short(folio_hist(back)))
    os.close(fd)
    paired_reads(t, size, 10, 2, f"wb={wb} reread", rows)
save(rows, f"exp2-{sys.argv[1]}.csv")
