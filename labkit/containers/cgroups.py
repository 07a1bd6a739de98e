"""Container cgroups on cgroup v1, v2 and the hybrid layout: limits, usage, freezer, removal.

Every container gets the cgroup ``labkit/<container-id>``. :func:`detect` reads /proc/self/mountinfo:

* **v2** (``/sys/fs/cgroup`` is cgroup2): one directory; ``memory.max``, ``memory.swap.max``,
  ``cpu.max``, ``pids.max``, ``cgroup.freeze``, ``cgroup.kill``.
* **v1** (one mount per controller), and **hybrid** (v1 controllers plus a v2 tree at
  ``/sys/fs/cgroup/unified`` that holds no useful controller): one directory per controller;
  ``memory.limit_in_bytes``, ``cpu.cfs_quota_us``, ``pids.max``, ``freezer.state``. Unlike crun, labkit
  does not refuse hybrid: it uses the v1 controllers, where the limits really are.

>>> from labkit.containers.cgroups import Limits, detect
>>> Limits(memory=64 << 20, cpus=0.5, pids=32).cpu_quota_us()
50000
>>> cg = detect().cgroup("0123456789")       # doctest: +SKIP
>>> cg.create(Limits(memory=64 << 20)); cg.stats()["memory_bytes"]   # doctest: +SKIP
0
"""
from __future__ import annotations

import errno
import os
import signal
import time
from typing import NamedTuple

from labkit import errors

from .._sys.record import Record, field

PARENT = "labkit"
PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer", "devices")
V2_CONTROLLERS = ("memory", "cpu", "pids")


class Limits(Record):
    """Resource limits; ``None`` means unlimited. ``cpus`` is a number of CPUs (0.5 = half of one);
    ``devices`` the v1 devices-controller allowlist (``"c 1:3 rwm"`` lines; ``None``: every device)."""

    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None
    devices: tuple[str, ...] | None = None

    def cpu_quota_us(self) -> int | None:
        """CFS quota per :data:`PERIOD_US` for ``cpus`` (at least 1000 µs, the kernel's minimum)."""
        return None if self.cpus is None else max(1000, int(self.cpus * PERIOD_US))


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _mkdir_under(path: str, *, only_parent: bool = False) -> None:
    """mkdir ``path`` after its parent; retried when a concurrent clean-up removed the parent between."""
    for attempt in range(5):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if only_parent:
            return
        try:
            os.mkdir(path)
            return
        except FileNotFoundError:
            if attempt == 4:
                raise


def _rmdir(path: str, timeout: float = 2.0) -> None:
    """rmdir a cgroup, retrying EBUSY for a moment (tasks that just exited may still be accounted)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class CgroupV1(Record, frozen=False):
    """A container's cgroup on v1: ``<mount of controller>/labkit/<id>`` for each controller."""

    id: str
    mounts: dict[str, str]          # controller -> its hierarchy's mount point
    version: int = 1
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"{PARENT}/{self.id}"

    def path(self, controller: str) -> str:
        """Directory of this cgroup in ``controller``'s hierarchy."""
        return os.path.join(self.mounts[controller], PARENT, self.id)

    def dirs(self) -> list[str]:
        """One directory per distinct hierarchy (co-mounted controllers share one)."""
        return sorted({self.path(c) for c in self.mounts})

    def create(self, limits: Limits = Limits()) -> None:
        """Make the directories and write the limits; on failure remove what was made."""
        made = []
        try:
            for d in self.dirs():
                try:
                    _mkdir_under(d)
                except FileExistsError:
                    raise errors.AlreadyExists(f"cgroup {self.name}", fix="remove it with `labkit gc`") from None
                made.append(d)
            if limits.memory is not None:
                _need(self.mounts, "memory", "memory limit")
                _write(self.path("memory") + "/memory.limit_in_bytes", str(limits.memory))
                sw = self.path("memory") + "/memory.memsw.limit_in_bytes"
                if os.path.exists(sw):      # only with swap accounting: keep the limit from spilling to swap
                    _write(sw, str(limits.memory))
            if limits.cpus is not None:
                _need(self.mounts, "cpu", "cpu limit")
                _write(self.path("cpu") + "/cpu.cfs_period_us", str(PERIOD_US))
                _write(self.path("cpu") + "/cpu.cfs_quota_us", str(limits.cpu_quota_us()))
            if limits.pids is not None:
                _need(self.mounts, "pids", "pids limit")
                _write(self.path("pids") + "/pids.max", str(limits.pids))
            if limits.devices is not None and "devices" in self.mounts:
                _write(self.path("devices") + "/devices.deny", "a")     # deny all, then allow the list
                for rule in limits.devices:
                    _write(self.path("devices") + "/devices.allow", rule)
        except BaseException:
            for d in reversed(made):
                _rmdir(d)
            raise

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes ``0`` to in order to join."""
        return [d + "/cgroup.procs" for d in self.dirs()]

    def pids(self) -> list[int]:
        """Host PIDs of the processes in the cgroup (empty when it is gone)."""
        out: set[int] = set()
        for d in self.dirs():
            try:
                out.update(int(x) for x in _read(d + "/cgroup.procs").split())
            except FileNotFoundError:
                pass
        return sorted(out)

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs())

    def stats(self) -> dict[str, int | None]:
        """``memory_bytes``, ``memory_peak_bytes``, ``cpu_seconds``... see :func:`Stats`."""
        def num(ctrl: str, fname: str) -> int | None:
            try:
                return int(_read(self.path(ctrl) + "/" + fname)) if ctrl in self.mounts else None
            except (FileNotFoundError, ValueError):
                return None
        usage_ns = num("cpuacct", "cpuacct.usage")
        return {"memory_bytes": num("memory", "memory.usage_in_bytes"),
                "memory_peak_bytes": num("memory", "memory.max_usage_in_bytes"),
                "memory_limit_bytes": num("memory", "memory.limit_in_bytes"),
                "cpu_usage_ns": usage_ns,
                "pids": num("pids", "pids.current"),
                "oom_kills": _oom_kills_v1(self.path("memory")) if "memory" in self.mounts else None}

    def freeze(self, timeout: float = 5.0) -> None:
        """Freeze every process (freezer.state FROZEN) and wait until the kernel says so."""
        _need(self.mounts, "freezer", "freeze")
        f = self.path("freezer") + "/freezer.state"
        _write(f, "FROZEN")
        _wait_for(lambda: _read(f) == "FROZEN", timeout, f"cgroup {self.name} to freeze")

    def thaw(self) -> None:
        if "freezer" in self.mounts and os.path.exists(self.path("freezer")):
            _write(self.path("freezer") + "/freezer.state", "THAWED")

    def frozen(self) -> bool:
        try:
            return _read(self.path("freezer") + "/freezer.state") != "THAWED"
        except (KeyError, FileNotFoundError):
            return False

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the cgroup (thawing it so they can die) and wait until it is empty."""
        kill_all(self.dirs(), timeout=timeout, what=f"cgroup {self.name}")

    def remove(self) -> None:
        """Kill what is left and remove the directories (no error when already gone)."""
        self.kill()
        for d in self.dirs():
            _rmdir(d)


class CgroupV2(Record, frozen=False):
    """A container's cgroup on the unified hierarchy: ``<root>/labkit/<id>``."""

    id: str
    root: str = "/sys/fs/cgroup"
    version: int = 2
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"{PARENT}/{self.id}"

    @property
    def dir(self) -> str:
        return os.path.join(self.root, PARENT, self.id)

    def dirs(self) -> list[str]:
        return [self.dir]

    def available(self) -> set[str]:
        """Controllers the root offers (``cgroup.controllers``); on a hybrid host often none we need."""
        return set(_read(self.root + "/cgroup.controllers").split())

    def create(self, limits: Limits = Limits()) -> None:
        """Enable the needed controllers down to ``labkit/``, make the cgroup and write the limits."""
        wanted = {"memory": limits.memory, "cpu": limits.cpus, "pids": limits.pids}
        need = {c for c, v in wanted.items() if v is not None}
        missing = need - self.available()
        if missing:
            raise errors.Unsupported(f"cgroup v2 at {self.root}", f"controller(s) {', '.join(sorted(missing))} "
                                     "not available", fix="use the v1 hierarchy (hybrid host) or a v2-only boot")
        parent = os.path.join(self.root, PARENT)
        _mkdir_under(self.dir, only_parent=True)
        enable = " ".join("+" + c for c in V2_CONTROLLERS if c in self.available())
        if enable:
            for d in (self.root, parent):
                try:
                    _write(d + "/cgroup.subtree_control", enable)
                except OSError:
                    if d == parent:
                        raise
        try:
            _mkdir_under(self.dir)
        except FileExistsError:
            raise errors.AlreadyExists(f"cgroup {self.name}", fix="remove it with `labkit gc`") from None
        try:
            if limits.memory is not None:
                _write(self.dir + "/memory.max", str(limits.memory))
                if os.path.exists(self.dir + "/memory.swap.max"):
                    _write(self.dir + "/memory.swap.max", "0")
            if limits.cpus is not None:
                _write(self.dir + "/cpu.max", f"{limits.cpu_quota_us()} {PERIOD_US}")
            if limits.pids is not None:
                _write(self.dir + "/pids.max", str(limits.pids))
        except BaseException:
            _rmdir(self.dir)
            raise

    def procs_files(self) -> list[str]:
        return [self.dir + "/cgroup.procs"]

    def pids(self) -> list[int]:
        try:
            return sorted(int(x) for x in _read(self.dir + "/cgroup.procs").split())
        except FileNotFoundError:
            return []

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def stats(self) -> dict[str, int | None]:
        def num(fname: str) -> int | None:
            try:
                v = _read(self.dir + "/" + fname)
                return None if v == "max" else int(v)
            except (FileNotFoundError, ValueError):
                return None
        cpu = _kv(self.dir + "/cpu.stat")
        events = _kv(self.dir + "/memory.events")
        return {"memory_bytes": num("memory.current"), "memory_peak_bytes": num("memory.peak"),
                "memory_limit_bytes": num("memory.max"),
                "cpu_usage_ns": cpu["usage_usec"] * 1000 if "usage_usec" in cpu else None,
                "pids": num("pids.current"), "oom_kills": events.get("oom_kill")}

    def freeze(self, timeout: float = 5.0) -> None:
        _write(self.dir + "/cgroup.freeze", "1")
        _wait_for(lambda: _kv(self.dir + "/cgroup.events").get("frozen") == 1, timeout,
                  f"cgroup {self.name} to freeze")

    def thaw(self) -> None:
        if os.path.exists(self.dir):
            _write(self.dir + "/cgroup.freeze", "0")

    def frozen(self) -> bool:
        return _kv(self.dir + "/cgroup.events").get("frozen") == 1

    def kill(self, timeout: float = 5.0) -> None:
        """``cgroup.kill`` where the kernel has it (5.14), then :func:`kill_all` for what is left."""
        if not os.path.exists(self.dir):
            return
        if os.path.exists(self.dir + "/cgroup.kill"):
            _write(self.dir + "/cgroup.kill", "1")
        kill_all(self.dirs(), timeout=timeout, what=f"cgroup {self.name}")

    def remove(self) -> None:
        self.kill()
        _rmdir(self.dir)


Cgroup = CgroupV1 | CgroupV2


class Layout(NamedTuple):
    """Which cgroup layout this host has and where: ``kind`` is ``v1``, ``hybrid`` or ``v2``."""

    kind: str
    v1: dict[str, str]
    v2_root: str | None

    def cgroup(self, cid: str) -> Cgroup:
        """The container cgroup for ``cid`` in the hierarchy that holds the controllers (v1 on hybrid)."""
        if self.kind == "v2":
            assert self.v2_root
            return CgroupV2(cid, self.v2_root)
        return CgroupV1(cid, {c: m for c, m in self.v1.items() if c in V1_CONTROLLERS})

    def parents(self) -> list[str]:
        """Every ``labkit`` parent directory where container cgroups may live (for gc)."""
        roots = set(self.v1.values()) | ({self.v2_root} if self.v2_root else set())
        return sorted(os.path.join(r, PARENT) for r in roots)


def detect(mountinfo: str = "/proc/self/mountinfo") -> Layout:
    """Read the cgroup mounts of this mount namespace.

    >>> detect().kind in ("v1", "hybrid", "v2")
    True
    """
    v1: dict[str, str] = {}
    v2 = None
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            target = left.split(" ")[4]
            fstype, _src, opts = (right.split(" ") + ["", ""])[:3]
            if fstype == "cgroup2" and v2 is None:
                v2 = target
            elif fstype == "cgroup":
                for o in opts.split(","):
                    if o in V1_CONTROLLERS or o in ("blkio", "devices", "cpuset", "hugetlb"):
                        v1.setdefault(o, target)
    if not v1 and v2:
        return Layout("v2", {}, v2)
    if v1 and v2:
        return Layout("hybrid", v1, v2)
    if v1:
        return Layout("v1", v1, None)
    raise errors.Unsupported("cgroups", "no cgroup filesystem mounted", fix="mount cgroup2 on /sys/fs/cgroup")


def _need(mounts: dict[str, str], ctrl: str, what: str) -> bool:
    if ctrl not in mounts:
        raise errors.Unsupported(f"{what}", f"cgroup v1 controller {ctrl} not mounted",
                                 fix=f"mount -t cgroup -o {ctrl} cgroup /sys/fs/cgroup/{ctrl}")
    return True


def _kv(path: str) -> dict[str, int]:
    out = {}
    try:
        for line in _read(path).splitlines():
            k, _, v = line.partition(" ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
    except FileNotFoundError:
        pass
    return out


def _oom_kills_v1(d: str) -> int | None:
    return _kv(d + "/memory.oom_control").get("oom_kill")


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise errors.FailedPrecondition(what, f"timed out after {timeout} s")
        time.sleep(0.002)


def procs(dirs: list[str]) -> set[int]:
    """Host PIDs listed in ``cgroup.procs`` of the cgroup directories ``dirs`` (missing ones: none)."""
    out: set[int] = set()
    for d in dirs:
        try:
            out.update(int(x) for x in _read(os.path.join(d, "cgroup.procs")).split())
        except (FileNotFoundError, ValueError):
            pass
    return out


def _thaw_dirs(dirs: list[str]) -> None:
    for d in dirs:          # frozen tasks die only once thawed
        for fname, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            try:
                _write(os.path.join(d, fname), value)
            except (FileNotFoundError, PermissionError):
                pass


def kill_all(dirs: list[str], *, timeout: float = 5.0, what: str = "cgroup") -> None:
    """SIGKILL every process in the cgroup directories ``dirs`` and wait until they are empty.

    The one kill loop of labkit (containers, ``remove``, ``labkit gc``). Each process is signalled
    through a pidfd, and only if its pid is still listed in the cgroup *after* the pidfd was opened:
    a pid recycled by an unrelated process between reading ``cgroup.procs`` and signalling is never
    hit (the pidfd pins the process it was opened for). Frozen cgroups are thawed so SIGKILL lands.
    Raises ``FailedPrecondition`` naming ``what`` if processes survive ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = procs(dirs)
        if not pids:
            return
        pinned: dict[int, int] = {}
        try:
            for pid in pids:
                try:
                    pinned[pid] = os.pidfd_open(pid)
                except (ProcessLookupError, OSError):
                    pass
            still = procs(dirs)
            for pid, fd in pinned.items():
                if pid in still:
                    try:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        finally:
            for fd in pinned.values():
                os.close(fd)
        _thaw_dirs(dirs)
        if time.monotonic() > deadline:
            raise errors.FailedPrecondition(what, f"processes {sorted(pids)} survive SIGKILL")
        time.sleep(0.005)


def leftover_cgroups(layout: Layout | None = None) -> dict[str, list[str]]:
    """Container id -> directories of every ``labkit/<id>`` cgroup on the host (any hierarchy)."""
    layout = layout or detect()
    out: dict[str, list[str]] = {}
    for parent in layout.parents():
        try:
            names = os.listdir(parent)
        except FileNotFoundError:
            continue
        for n in names:
            if os.path.isdir(os.path.join(parent, n)):
                out.setdefault(n, []).append(os.path.join(parent, n))
    return out


def remove_parent_if_empty(cgroup: Cgroup) -> None:
    """Remove the ``labkit`` parent directories once no container cgroup is left in them (races with a
    concurrent create are harmless: that create makes the parent again)."""
    for d in cgroup.dirs():
        try:
            os.rmdir(os.path.dirname(d))
        except OSError:
            pass
