"""Fixtures for the container runtime tests: a busybox rootfs, a Runtime per test, and the host check
that every test (and the module) leaves no lk-* interface, netns, labkit cgroup or mount behind."""
from __future__ import annotations

import os

import pytest

from labkit._sys import mounts
from labkit.images.busybox import build_busybox_rootfs


def host_leftovers() -> list[str]:
    """Everything labkit's runtime could leave on the host, as readable lines (empty when clean)."""
    from labkit.containers import cgroups as cg
    from labkit.containers import network as net
    from labkit.containers.runtime import REGISTRY
    out = [f"link {n} ({k})" for n, k in net.links()]
    out += [f"cgroup labkit/{cid}: {dirs}" for cid, dirs in cg.leftover_cgroups().items()]
    out += [f"cgroup parent {p}" for p in cg.detect().parents() if os.path.isdir(p)]
    if os.path.isdir("/sys/fs/cgroup/unified/labkit"):
        out.append("cgroup parent /sys/fs/cgroup/unified/labkit")
    if os.path.isdir("/run/netns"):
        out += [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith("lk-")]
    if os.path.isdir(REGISTRY):
        out += [f"record {n}" for n in os.listdir(REGISTRY)]
    out += [f"address {br}/{ip} of {cid}" for br, ip, cid in net.ipam_records()]
    return out


def _mounts() -> set[tuple[str, str]]:
    return {(m.target, m.source) for m in mounts.mountinfo()}


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("rootfs")
    build_busybox_rootfs(str(d))
    os.chmod(d, 0o755)          # pytest makes 0700 dirs; a root directory must be searchable by users
    with open(d / "var" / "www" / "index.html", "w") as f:
        f.write("hello from labkit\n")
    return str(d)


@pytest.fixture(scope="module", autouse=True)
def module_clean() -> object:
    if os.geteuid() != 0:
        yield
        return
    before = _mounts()
    assert host_leftovers() == [], "the host had labkit leftovers before the module: run `labkit gc --all`"
    yield
    assert host_leftovers() == []
    assert _mounts() - before == set()


@pytest.fixture
def rt(tmp_path):
    """A Runtime in a fresh state dir; afterwards every container is removed and the host must be clean."""
    from labkit.containers import Runtime
    before = _mounts()
    runtime = Runtime(str(tmp_path / "state"))
    yield runtime
    for c in runtime.list():
        c.remove(force=True)
    runtime.close()
    assert host_leftovers() == []
    assert _mounts() - before == set()


@pytest.fixture
def leftovers():
    """The :func:`host_leftovers` check, for tests that look in the middle."""
    return host_leftovers
