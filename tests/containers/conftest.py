"""Fixtures for the container runtime tests: a busybox rootfs, a Runtime per test, and the host check
that every test (and the module) leaves no lk-* interface, netns, labkit cgroup or mount behind.

Mounts are compared only below this session's pytest base directory: other sessions (other helpers,
the lead) mount and unmount their own stores on this machine at the same time."""
from __future__ import annotations

import os

import pytest

from labkit._sys import mounts
from labkit.images.busybox import build_busybox_rootfs


def _my_ids() -> set[str]:
    """Ids of this session's containers: registry records and state directories below its base dir."""
    import glob

    from labkit.containers.runtime import REGISTRY
    base = _BASE[0] if _BASE else "/"
    ids = set(_SEEN)
    if os.path.isdir(REGISTRY):
        for cid in os.listdir(REGISTRY):
            try:
                with open(os.path.join(REGISTRY, cid)) as f:
                    if f.read().strip().startswith(base):
                        ids.add(cid)
            except FileNotFoundError:
                pass
    for pattern in ("*/containers/*", "*/*/containers/*", "*/state/*"):
        ids.update(os.path.basename(p) for p in glob.glob(os.path.join(base, pattern)))
    return ids


def host_leftovers() -> list[str]:
    """What this session's containers could leave on the host, as readable lines (empty when clean).

    Scoped to this session's container ids: other sessions run containers on this machine at the same
    time (their cgroups, veths and records are theirs to check)."""
    from labkit.containers import cgroups as cg
    from labkit.containers import network as net
    from labkit.containers.runtime import REGISTRY
    ids = _my_ids()
    out = [f"link {n} ({k})" for n, k in net.links() if any(cid in n for cid in ids)]
    out += [f"cgroup labkit/{cid}: {dirs}" for cid, dirs in cg.leftover_cgroups().items() if cid in ids]
    if os.path.isdir("/run/netns"):
        out += [f"netns {n}" for n in os.listdir("/run/netns") if n[3:] in ids]
    if os.path.isdir(REGISTRY):
        out += [f"record {n}" for n in os.listdir(REGISTRY) if n in ids]
    out += [f"address {br}/{ip} of {cid}" for br, ip, cid in net.ipam_records() if cid in ids]
    return out


_SEEN: set[str] = set()
_BASE: list[str] = []


def _mounts() -> set[tuple[str, str]]:
    """(target, source) of the mounts that concern this session (below its pytest base directory)."""
    base = _BASE[0] if _BASE else "/"
    return {(m.target, m.source) for m in mounts.mountinfo()
            if m.target.startswith(base) or m.source.startswith(base)}


@pytest.fixture(scope="session", autouse=True)
def _session_base(tmp_path_factory: pytest.TempPathFactory) -> None:
    _BASE[:] = [str(tmp_path_factory.getbasetemp())]


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
    runtime = Runtime(str(tmp_path / "containers"))
    yield runtime
    for c in runtime.list():
        _SEEN.add(c.id)
        c.remove(force=True)
    runtime.close()
    assert host_leftovers() == []
    assert _mounts() - before == set()


@pytest.fixture
def leftovers():
    """The :func:`host_leftovers` check, for tests that look in the middle."""
    return host_leftovers
