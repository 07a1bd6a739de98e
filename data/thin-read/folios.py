"""Histogram of page-cache folio sizes of a file's cached pages (root: /proc/self/pagemap + /proc/kpageflags).

Only pages already cached are touched (mincore first), so nothing is read in."""
from __future__ import annotations

import collections
import ctypes
import mmap
import os
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
PAGE = 4096
KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_THP = 15, 16, 22


def folio_hist(path: str, length: int | None = None) -> dict[str, object]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = length or os.fstat(fd).st_size
        if size == 0:
            size = os.lseek(fd, 0, os.SEEK_END)
        npages = size // PAGE
        m = mmap.mmap(fd, npages * PAGE, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        import numpy as np  # noqa
        arr = np.frombuffer(m, dtype=np.uint8)
        addr = arr.ctypes.data
        vec = ctypes.create_string_buffer(npages)
        if libc.mincore(ctypes.c_void_p(addr), npages * PAGE, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        cached = [i for i in range(npages) if vec.raw[i] & 1]
        for i in cached:
            _ = arr[i * PAGE]          # fault the cached page in (no I/O: it is cached)
        with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
            pm.seek(addr // PAGE * 8)
            entries = struct.unpack(f"{npages}Q", pm.read(npages * 8))
            orders: collections.Counter[int] = collections.Counter()
            run = 0
            thp = 0
            heads = tails = single = 0
            for i in cached:
                e = entries[i]
                if not e >> 63 & 1:
                    continue
                pfn = e & ((1 << 55) - 1)
                kf.seek(pfn * 8)
                (flags,) = struct.unpack("Q", kf.read(8))
                if flags >> KPF_THP & 1:
                    thp += 1
                if flags >> KPF_COMPOUND_HEAD & 1:
                    heads += 1
                    if run:
                        orders[run] += 1
                    run = 1
                elif flags >> KPF_COMPOUND_TAIL & 1:
                    tails += 1
                    run += 1
                else:
                    single += 1
                    if run:
                        orders[run] += 1
                    run = 0
                    orders[1] += 1
            if run:
                orders[run] += 1
        del arr
    finally:
        m.close()
    pages_in = {k * PAGE // 1024: v * k for k, v in sorted(orders.items())}
    return {"path": path, "cached_pages": len(cached), "order0_pages": single, "compound_heads": heads,
            "compound_tails": tails, "thp_flag_pages": thp,
            "pages_by_folio_kib": pages_in}


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(folio_hist(p))
