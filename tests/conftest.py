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
