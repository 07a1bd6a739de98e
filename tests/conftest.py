"""Shared fixtures, and the host-hygiene check: the suite must leave no labkit mount, loop device, lk-* link or
container cgroup.

At session start the plugin records the host's mounts and loop devices; at the end any new mount or loop
device (and any mount whose source or target names labkit or a pytest temp dir) fails the run.
"""
from __future__ import annotations

import os

import pytest

from labkit._sys import loop, mounts

ROOT_REASON = "needs root (mounts, loop devices); run the suite as root, e.g. in a VM"


def _host_state() -> tuple[set[tuple[str, str]], set[str]]:
    ms = {(m.target, m.source) for m in mounts.mountinfo()}
    loops = {f"{lp.dev} {lp.backing_file}" for lp in loop.list_loops()}
    # network links and container cgroups of labkit's (netns go with their processes; see tests/containers)
    try:
        loops |= {f"link {n}" for n in os.listdir("/sys/class/net") if n.startswith("lk")}
    except FileNotFoundError:
        pass
    for ctl in ("memory", "pids", "cpu", "freezer", "devices"):
        base = f"/sys/fs/cgroup/{ctl}/labkit"
        if os.path.isdir(base):
            loops |= {f"cgroup {ctl}/labkit/{d}" for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))}
    return ms, loops


_BEFORE: tuple[set[tuple[str, str]], set[str]] | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _BEFORE
    _BEFORE = _host_state()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _BEFORE is None or hasattr(session.config, "workerinput"):
        return
    ms, loops = _host_state()
    new_mounts = sorted(ms - _BEFORE[0])
    new_loops = sorted(loops - _BEFORE[1])
    if new_mounts or new_loops:
        lines = [f"  mount {t} ({s})" for t, s in new_mounts] + [f"  {lp}" for lp in new_loops]
        session.config.stash[_LEAK] = lines
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_LEAK = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_LEAK, None)
    if lines:
        terminalreporter.section("host hygiene: the suite left these behind", red=True)
        for line in lines:
            terminalreporter.write_line(line)
        terminalreporter.write_line("host hygiene check FAILED: release them with `labkit gc --all`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason=ROOT_REASON)
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """``@pytest.mark.one_thread``: the test runs in a forked child of the suite, which has exactly one
    thread — what forking the thin pool's daemon needs (PoolClient refuses to fork beside other threads, and
    earlier tests may have left this process some: a reaper, tqdm's monitor, a Dask client's loop)."""
    from labkit.thin.client import single_threaded
    if pyfuncitem.get_closest_marker("one_thread") is None or single_threaded():
        return None
    import traceback
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the child: run the test body, report, never return
        os.close(r)
        code = 0
        try:
            pyfuncitem.obj(**args)
        except BaseException:                       # noqa: BLE001 - reported to the parent as the failure
            os.write(w, traceback.format_exc().encode(errors="replace"))
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    if status:
        pytest.fail(f"in a one-thread child (status {status}):\n{out.decode(errors='replace')}", pytrace=False)
    return True
