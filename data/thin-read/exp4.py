"""Folio size on the loop device's backing page cache, isolated: loop over tmpfs huge=never (order-0) vs
tmpfs huge=always (large) vs ext4 (large) vs thin (FUSE, order-0). Paired rounds, order rotated."""
import os, sys, time, contextlib, statistics, random, subprocess
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from harness import *
from folios import folio_hist
from labkit._sys import loop as sysloop, mounts
from labkit.snapshots.mount import unmount
from labkit._sys.fs import run as run_tool

@contextlib.contextmanager
def loop_on(dirpath, size, name):
    image = os.path.join(dirpath, f"{name}.img")
    with open(image, "wb") as f:
        f.truncate(max(2 * size, 256 * MIB))
    run_tool(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", image], image)
    target = os.path.join(dirpath, f"{name}-mnt"); os.mkdir(target)
    dev = sysloop.attach(image, name=f"thinread-{name}")
    mounts.mount(dev, target, "ext4", 0, "noinit_itable"); sysloop.set_autoclear(dev)
    try:
        yield target, image
    finally:
        unmount(target)

size = 256 * MIB
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 12
rows = []
with contextlib.ExitStack() as st:
    t = st.enter_context(targets(size))
    base = os.path.dirname(t["loop"])
    images = {"loop": backing_of(t["loop"])[1], "thin": backing_of(t["thin"])[1]}
    for huge in ("never", "always"):
        d = os.path.join(base, f"tmpfs-{huge}"); os.mkdir(d)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1G,huge={huge}", "thinread", d], check=True)
        st.callback(subprocess.run, ["umount", d])
        mnt, img = st.enter_context(loop_on(d, size, f"tmpfs_{huge}"))
        t[f"tmpfs_{huge}"] = mnt; images[f"tmpfs_{huge}"] = img
        block = random.Random(42).randbytes(MIB)
        thin_io._seq_write(os.path.join(mnt, "file"), size, block)
        thin_io._seq_read(os.path.join(mnt, "file"), size)
    for k, img in images.items():
        h = folio_hist(img)
        print(k, h["cached_pages"], h["pages_by_folio_kib"])
    names = list(t)
    speeds = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2: order.reverse()
        res = {}
        for n in order:
            p = os.path.join(t[n], "file")
            res[n] = 2 * size / MIB / sum(thin_io._seq_read(p, size) for _ in range(2))
            speeds[n].append(res[n])
        for n in names:
            rows.append({"variant": n, "round": r, "mib_s": res[n], "ratio_vs_loop_ext4": res[n] / res["loop"], "load_1m": load()})
    for n in names:
        rs = [s / l for s, l in zip(speeds[n], speeds["loop"])]
        q = statistics.quantiles(rs, n=4)
        print(f"{n:14s} {statistics.median(speeds[n]):6.0f} MiB/s  vs loop-ext4 {statistics.median(rs):.3f} ({q[0]:.3f}-{q[2]:.3f}, {min(rs):.3f}-{max(rs):.3f})")
    print("load", load())
save(rows, "exp4-folio-control.csv")
