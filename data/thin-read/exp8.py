"""cpu-clock profile of the loop worker, per MiB read: loop (ext4 file), thin (FUSE file), loop over tmpfs
huge=never (order-0 control). Each target profiled alone for ~3 s, twice, order alternated."""
import os, sys, time, subprocess, contextlib, random, collections, json
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from harness import *
from loopon import loop_on
size = 256 * MIB
HZ = 9999
def worker_profile(path):
    out = subprocess.run(["perf", "script", "-i", path, "-F", "comm,tid,ip,sym"], capture_output=True, text=True).stdout
    leaf = collections.Counter(); n = 0
    for b in out.split("\n\n"):
        lines = [l.strip() for l in b.strip().splitlines()]
        syms = [l.split(None, 1)[1] if len(l.split(None, 1)) > 1 else l for l in lines[1:]]
        if any(("lo_rw_aio" in s or "loop_process_work" in s) for s in syms):
            n += 1; leaf[syms[0] if syms else "?"] += 1
    return n, leaf
res = collections.defaultdict(lambda: [0, collections.Counter(), 0])
with contextlib.ExitStack() as st:
    t = st.enter_context(targets(size))
    base = os.path.dirname(t["loop"])
    d = os.path.join(base, "tmpfs-never"); os.mkdir(d)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1G,huge=never", "thinread", d], check=True)
    st.callback(subprocess.run, ["umount", d])
    mnt, img = st.enter_context(loop_on(d, size, "tmpfs_never"))
    t["tmpfs_never"] = mnt
    thin_io._seq_write(os.path.join(mnt, "file"), size, random.Random(42).randbytes(MIB))
    for name in ["loop", "thin", "tmpfs_never", "tmpfs_never", "thin", "loop"]:
        p = os.path.join(t[name], "file")
        thin_io._seq_read(p, size)
        data = os.environ.get("THINREAD_SCRATCH", "/var/tmp/thinread") + f"/perf8-{name}.data"
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(HZ), "-a", "-g", "-o", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        t0 = time.perf_counter(); k = 0
        while time.perf_counter() - t0 < 3:
            thin_io._seq_read(p, size); k += 1
        perf.send_signal(2); perf.wait()
        n, leaf = worker_profile(data)
        r = res[name]; r[0] += n; r[1].update(leaf); r[2] += k * 256
        print(name, f"{k*256/(time.perf_counter()-t0):.0f} MiB/s load {load()}", flush=True)
        os.unlink(data)
groups = {"memcpy": ("__pi_memcpy", "memcpy", "_copy_to_iter", "copy_page_to_iter"),
          "page-cache lookup/refs": ("filemap_get_read_batch", "filemap_read", "__xas_next", "xas_load", "xas_start",
                                     "folio_mark_accessed", "filemap_get_pages", "shmem_get_folio_gfp", "shmem_file_read_iter",
                                     "__rcu_read_lock", "__rcu_read_unlock", "folio_put", "find_lock_entries", "filemap_get_entry")}
summary = {}
for name, (n, leaf, mib) in res.items():
    us = lambda c: c / mib * 1e6 / HZ
    g = {k: us(sum(leaf[s] for s in v)) for k, v in groups.items()}
    g["other"] = us(n) - sum(g.values())
    summary[name] = {"worker_us_per_mib": round(us(n), 1), **{k: round(v, 1) for k, v in g.items()},
                     "top": [(s, round(us(c), 1)) for s, c in leaf.most_common(12)]}
    print(name, json.dumps(summary[name]))
json.dump(summary, open(os.environ.get("THINREAD_SCRATCH", "/var/tmp/thinread") + "/exp8-profile.json", "w"), indent=1)
