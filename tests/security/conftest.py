"""Fixtures for the security tests: a busybox rootfs with ``/bin/lkprobe`` (probe.c, built statically
with the host's gcc: one raw syscall per call, prints ``OK`` or the errno's name), a Runtime per test,
and the check that nothing is left on the host."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from labkit.images.busybox import build_busybox_rootfs

HERE = os.path.dirname(os.path.abspath(__file__))


def _host_leftovers(state_dir: str) -> list[str]:
    """This test's containers' things on the host: records, cgroups, veths (scoped to ``state_dir``)."""
    from labkit.containers import cgroups as cg
    from labkit.containers import network as net
    from labkit.containers.runtime import REGISTRY
    mine = set()
    if os.path.isdir(REGISTRY):
        for cid in os.listdir(REGISTRY):
            try:
                with open(os.path.join(REGISTRY, cid)) as f:
                    if f.read().strip().startswith(state_dir):
                        mine.add(cid)
            except FileNotFoundError:
                pass
    out = [f"record {cid}" for cid in mine]
    out += [f"cgroup labkit/{cid}" for cid in cg.leftover_cgroups() if cid in mine]
    out += [f"link {n}" for n, _k in net.links() if any(cid in n for cid in mine)]
    return out


def _mounts(base: str) -> set[tuple[str, str]]:
    from labkit._sys import mounts
    return {(m.target, m.source) for m in mounts.mountinfo() if m.target.startswith(base) or m.source.startswith(base)}


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The static probe binary (built once per session)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("the security tests need gcc (apt-get install gcc libc6-dev) to build their probe")
    out = str(tmp_path_factory.mktemp("probe") / "lkprobe")
    subprocess.run([gcc, "-static", "-O2", "-o", out, os.path.join(HERE, "probe.c")], check=True,
                   capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory, probe: str) -> str:
    d = tmp_path_factory.mktemp("rootfs")
    build_busybox_rootfs(str(d))
    os.chmod(d, 0o755)
    shutil.copy2(probe, d / "bin" / "lkprobe")
    return str(d)


@pytest.fixture
def rt(tmp_path, tmp_path_factory):
    """A Runtime in a fresh state dir; afterwards its containers are removed and nothing of them is left."""
    from labkit.containers import Runtime
    base = str(tmp_path_factory.getbasetemp())
    before = _mounts(base)
    state_dir = str(tmp_path / "containers")
    runtime = Runtime(state_dir)
    yield runtime
    for c in runtime.list():
        c.remove(force=True)
    runtime.close()
    assert _host_leftovers(state_dir) == []
    assert _mounts(base) - before == set()
