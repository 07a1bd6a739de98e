"""A container's recorded state: :class:`ContainerState`, serialised as ``<state_dir>/<id>/state.json``.

Also the names: :func:`check_name` (Docker's rule for container names) and :data:`ID_RE` (labkit's
container ids), which everything that builds a path or a kernel object name from them relies on.

>>> s = ContainerState(id="0123456789", name="web", rootfs="/r", cmd=["sh"], env=["PATH=/bin"])
>>> ContainerState.from_json(s.to_json()) == s
True
>>> check_name("web-1.a_b")
'web-1.a_b'
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, NamedTuple

from labkit import errors

from .._sys.record import Record, field, field_names
from . import cgroups as cg
from .network import BridgeConfig
from .security import Profile

#: Docker's rule for container names
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
NAME_MAX = 128
#: labkit's container ids: 10 lower-case hex digits (``secrets.token_hex(5)``); veth names need <= 10
ID_RE = re.compile(r"[0-9a-f]{10}\Z")


def check_name(name: str) -> str:
    """``name`` if it is a valid container name, else a one-line ``InvalidArgument``."""
    if not isinstance(name, str) or len(name) > NAME_MAX or not NAME_RE.match(name):
        raise errors.InvalidArgument(f"container name {name!r}",
                                     f"must match [a-zA-Z0-9][a-zA-Z0-9_.-]* and have at most {NAME_MAX} characters")
    return name


def is_id(text: str) -> bool:
    """True for a well-formed container id (what may appear in paths, cgroup and link names)."""
    return bool(ID_RE.match(text))


class Bind(NamedTuple):
    """A bind mount: host path -> container path, read-only when ``ro``."""

    source: str
    target: str
    ro: bool = False

    @classmethod
    def parse(cls, spec: str | tuple[str, str] | tuple[str, str, bool] | Bind) -> Bind:
        """Accept ``Bind``, ``(src, dst[, ro])`` or docker's ``"src:dst[:ro]"``.

        >>> Bind.parse("/tmp:/data:ro")
        Bind(source='/tmp', target='/data', ro=True)
        """
        if isinstance(spec, Bind):
            b = spec
        elif isinstance(spec, str):
            parts = spec.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise errors.InvalidArgument(f"bind {spec!r}", "expected HOST:CONTAINER[:ro]")
            b = cls(parts[0], parts[1], len(parts) == 3 and parts[2] == "ro")
        else:
            b = cls(spec[0], spec[1], bool(spec[2]) if len(spec) > 2 else False)
        if not os.path.isabs(b.source) or not os.path.isabs(b.target):
            raise errors.InvalidArgument(f"bind {b.source}:{b.target}", "both paths must be absolute")
        if "\0" in b.source + b.target or ".." in b.target.split("/"):
            raise errors.InvalidArgument(f"bind {b.source}:{b.target}", "target must not contain '..'")
        if not os.path.exists(b.source):
            raise errors.NotFound(f"bind source {b.source}", fix="create it first")
        return b


class CgroupRef(Record):
    """Where a container's cgroup is: v2 ``root``, or the v1 controller -> mount point map."""

    version: int
    root: str | None = None
    mounts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, c: cg.Cgroup) -> CgroupRef:
        if isinstance(c, cg.CgroupV2):
            return cls(2, root=c.root)
        return cls(1, mounts=dict(c.mounts))

    def open(self, cid: str) -> cg.Cgroup:
        if self.version == 2:
            return cg.CgroupV2(cid, self.root or "/sys/fs/cgroup")
        return cg.CgroupV1(cid, dict(self.mounts))


class ContainerState(Record, frozen=False):
    """Everything labkit records about one container (see docs/containers.md).

    Set at creation: identity, what runs and how (``cmd`` ... ``profile``), where (``cgroup``,
    ``bridge``). Set once started: ``shim``/``pid`` with their start times (field 22 of
    ``/proc/<pid>/stat``, so a recycled pid is never taken for them), ``ip`` on a bridge.
    """

    id: str
    name: str
    rootfs: str
    cmd: list[str]
    env: list[str]
    workdir: str = "/"
    uid: int = 0
    gid: int = 0
    hostname: str = ""
    network: str = "none"
    readonly: bool = False
    binds: list[Bind] = field(default_factory=list)
    created: float = 0.0
    limits: cg.Limits = field(default_factory=cg.Limits)
    cgroup: CgroupRef = field(default_factory=lambda: CgroupRef(2))
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    profile: Profile = field(default_factory=Profile)
    tty: bool = False
    ip: str | None = None
    shim: int | None = None
    shim_start: int | None = None
    pid: int | None = None
    pid_start: int | None = None
    started: float | None = None
    network_released: bool = False

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {n: getattr(self, n) for n in field_names(self)}
        d["binds"] = [[b.source, b.target, b.ro] for b in self.binds]
        d["limits"] = {"memory": self.limits.memory, "cpus": self.limits.cpus, "pids": self.limits.pids,
                       "devices": list(self.limits.devices) if self.limits.devices is not None else None}
        d["cgroup"] = {"version": self.cgroup.version, "root": self.cgroup.root, "mounts": self.cgroup.mounts}
        d["bridge"] = {"name": self.bridge.name, "subnet": self.bridge.subnet, "nat": self.bridge.nat}
        d["profile"] = self.profile.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ContainerState:
        """Read :meth:`to_json`'s dict (unknown keys are ignored, missing optional ones take defaults)."""
        known = set(field_names(cls))
        kw = {k: v for k, v in d.items() if k in known}
        kw["binds"] = [Bind(s, t, bool(ro)) for s, t, ro in d.get("binds", [])]
        lim = d.get("limits") or {}
        devs = lim.get("devices")
        kw["limits"] = cg.Limits(memory=lim.get("memory"), cpus=lim.get("cpus"), pids=lim.get("pids"),
                                 devices=tuple(devs) if devs is not None else None)
        c = d.get("cgroup") or {}
        kw["cgroup"] = CgroupRef(int(c.get("version", 2)), c.get("root"), dict(c.get("mounts") or {}))
        if "bridge" in d:
            kw["bridge"] = BridgeConfig(**d["bridge"])
        kw["profile"] = Profile.from_json(d.get("profile"))
        return cls(**kw)

    def save(self, path: str) -> None:
        """Write ``path`` atomically (a temporary file renamed over it)."""
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> ContainerState:
        with open(path) as f:
            return cls.from_json(json.load(f))
