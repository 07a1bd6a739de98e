"""cgroup layouts (v1, hybrid, v2), the v2 code path on this host's unified tree, OCI bundles under runc,
and the start-latency benchmark."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from labkit import errors
from labkit.containers import cgroups as cg
from labkit.containers import oci
from labkit.containers.network import BridgeConfig, nat_rule
from labkit.containers.runtime import Bind, decode_status

MOUNTINFO_V2 = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
MOUNTINFO_V1 = ("30 1 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
                "31 1 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n")


def test_detect_layouts(tmp_path):
    p = tmp_path / "mi"
    p.write_text(MOUNTINFO_V2)
    assert cg.detect(str(p)) == cg.Layout("v2", {}, "/sys/fs/cgroup")
    p.write_text(MOUNTINFO_V1)
    lay = cg.detect(str(p))
    assert lay.kind == "v1" and lay.v1["cpu"] == lay.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert len(lay.cgroup("x").dirs()) == 2          # co-mounted controllers share one directory
    p.write_text(MOUNTINFO_V1 + "32 1 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    assert cg.detect(str(p)).kind == "hybrid"
    assert isinstance(cg.detect(str(p)).cgroup("x"), cg.CgroupV1)   # hybrid uses the v1 controllers


def test_small_helpers(tmp_path):
    assert cg.Limits(cpus=1.5).cpu_quota_us() == 150000 and cg.Limits(cpus=0.001).cpu_quota_us() == 1000
    assert decode_status(0) == (0, None) and decode_status(15) == (143, 15)
    assert Bind.parse((str(tmp_path), "/x")) == Bind(str(tmp_path), "/x", False)
    with pytest.raises(errors.InvalidArgument):
        Bind.parse("relative:/x")
    with pytest.raises(errors.InvalidArgument):
        BridgeConfig(name="br0")
    assert "MASQUERADE" in nat_rule(BridgeConfig(subnet="10.99.0.0/24"))
    cfg = oci.write_bundle(str(tmp_path / "b"), "/r", ["sh"], readonly=True, memory=1 << 20, pids=5)
    assert cfg["root"] == {"path": "/r", "readonly": True} and cfg["linux"]["resources"]["pids"] == {"limit": 5}


@pytest.mark.root
def test_host_layout_is_detected():
    lay = cg.detect()
    assert lay.kind in ("v1", "hybrid", "v2")
    if os.path.isdir("/sys/fs/cgroup/memory") and os.path.ismount("/sys/fs/cgroup/unified"):
        assert lay.kind == "hybrid"


UNIFIED = "/sys/fs/cgroup/unified"


@pytest.mark.root
@pytest.mark.skipif(not os.path.ismount(UNIFIED) and cg.detect().kind != "v2", reason="no cgroup2 tree here")
def test_v2_code_path_on_the_unified_tree(tmp_path, rootfs):
    """Run containers with the v2 driver on the host's cgroup2 tree: membership, freeze, removal. On a
    hybrid host that tree has no memory/cpu/pids controller, so limits are refused with the reason."""
    from labkit.containers import Runtime
    lay = cg.detect()
    layout = lay if lay.kind == "v2" else cg.Layout("v2", {}, UNIFIED)
    root = layout.v2_root
    rt = Runtime(str(tmp_path / "state"), layout=layout)
    try:
        c = rt.run(rootfs, ["cat", "/proc/self/cgroup"])
        assert f"0::/labkit/{c.id}" in c.logs()
        c.remove()
        c = rt.run(rootfs, ["sh", "-c", "while :; do :; done"], detach=True)
        assert c.cgroup.pids() == [c.pid]
        c.freeze()
        assert c.stats()["frozen"]
        c.thaw()
        assert not c.cgroup.frozen()
        c.remove(force=True)
        assert not os.path.exists(f"{root}/labkit/{c.id}")
        if "memory" not in set(open(f"{root}/cgroup.controllers").read().split()):
            with pytest.raises(errors.Unsupported, match="memory"):
                rt.run(rootfs, ["true"], memory=32 << 20)
        assert rt.ps() == []
    finally:
        for c in rt.list():
            c.remove(force=True)
        rt.close()
    assert not os.path.exists(f"{root}/labkit")


@pytest.mark.root
@pytest.mark.skipif(shutil.which("runc") is None, reason="runc not installed (apt-get install runc)")
def test_oci_bundle_runs_under_runc(tmp_path, rootfs):
    bundle = tmp_path / "bundle"
    oci.write_bundle(str(bundle), rootfs, ["sh", "-c", "echo $$ $(hostname); ls /dev | grep -c ."],
                     hostname="ocibox")
    p = subprocess.run(["runc", "--root", str(tmp_path / "runc"), "run", "--bundle", str(bundle),
                        f"lktest{os.getpid()}"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "1 ocibox"


@pytest.mark.root
def test_start_latency_labkit_vs_runc(tmp_path, rootfs):
    from labkit.containers.bench import medians, start_latency
    t = time.monotonic()
    df = start_latency(str(tmp_path), rootfs, repeat=5, warmup=1)
    assert list(df.columns) == ["runtime", "repeat", "warmup", "seconds"]
    med = medians(df)
    assert "labkit" in med and 0 < med["labkit"] < 0.5
    if shutil.which("runc"):
        assert "runc" in med, df.attrs["skipped"]
    for name, reason in df.attrs["skipped"].items():
        assert reason, name
    assert df.groupby("runtime").size().eq(6).all() and df.warmup.sum() == len(med)
    assert time.monotonic() - t < 20


def test_v2_files_written_on_a_fake_tree(tmp_path):
    """What the v2 driver writes where a real v2 host has the controllers (this host does not)."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    c = cg.CgroupV2("abc", str(tmp_path))
    c.create(cg.Limits(memory=64 << 20, cpus=0.5, pids=32))
    d = tmp_path / "labkit" / "abc"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (tmp_path / "labkit" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (d / "memory.max").read_text() == str(64 << 20)
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "pids.max").read_text() == "32"
    assert c.procs_files() == [str(d / "cgroup.procs")]
    (d / "memory.current").write_text("4096\n")
    (d / "memory.peak").write_text("8192\n")
    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    (d / "memory.events").write_text("low 0\noom 1\noom_kill 1\n")
    (d / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    st = c.stats()
    assert (st["memory_bytes"], st["memory_peak_bytes"], st["cpu_usage_ns"], st["oom_kills"]) \
        == (4096, 8192, 1_500_000, 1)
    assert st["memory_limit_bytes"] == 64 << 20 and st["pids"] is None and not c.frozen()
    with pytest.raises(errors.AlreadyExists):
        c.create()
    (tmp_path / "cgroup.controllers").write_text("cpu\n")
    with pytest.raises(errors.Unsupported, match="memory, pids"):
        cg.CgroupV2("def", str(tmp_path)).create(cg.Limits(memory=1 << 20, pids=3))
    assert not (tmp_path / "labkit" / "def").exists()


def test_v1_files_written_on_a_fake_tree(tmp_path):
    mounts = {c: str(tmp_path / c) for c in ("memory", "cpu", "cpuacct", "pids", "freezer")}
    mounts["cpuacct"] = mounts["cpu"]                    # co-mounted like cpu,cpuacct on many hosts
    c = cg.CgroupV1("abc", mounts)
    c.create(cg.Limits(memory=1 << 20, cpus=2, pids=7))
    assert (tmp_path / "memory/labkit/abc/memory.limit_in_bytes").read_text() == str(1 << 20)
    assert (tmp_path / "cpu/labkit/abc/cpu.cfs_quota_us").read_text() == "200000"
    assert (tmp_path / "cpu/labkit/abc/cpu.cfs_period_us").read_text() == "100000"
    assert (tmp_path / "pids/labkit/abc/pids.max").read_text() == "7"
    assert len(c.procs_files()) == 4
    with pytest.raises(errors.Unsupported, match="pids"):
        cg.CgroupV1("x", {"memory": mounts["memory"]}).create(cg.Limits(pids=3))
    assert not (tmp_path / "memory/labkit/x").exists()        # unwound
