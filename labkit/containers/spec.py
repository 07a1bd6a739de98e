"""What the runtime asks the spawner to do: typed requests, serialised as JSON over the socket.

:class:`ProcessSpec` is what the container's process becomes (command, user, capabilities, seccomp,
rlimits); :class:`RunSpec` adds what PID 1 sets up (root, mounts, hostname, network, cgroup, files);
:class:`ExecSpec` what an ``exec`` joins. Only the standard library is imported: the spawner
(``python -S``) loads this module.

>>> p = ProcessSpec(cmd=["true"], env=["PATH=/bin"])
>>> ExecSpec.from_json(ExecSpec(process=p, pid=1, output="/o", status="/s").to_json()).process.cmd
['true']
"""
from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class ProcessSpec:
    """The process to exec, and the privileges it keeps (see :mod:`labkit.containers.security`).

    ``caps`` is a capability mask (bit N = capability N), ignored when ``privileged``; ``seccomp`` a
    classic-BPF program (``b""``: no filter); ``rlimits`` ``(name, soft, hard)`` with ``name`` as in
    ``resource.RLIMIT_<name>``; ``tty``: stdin, stdout and stderr are the pty slave ``tty_path``, made
    the controlling terminal of a new session.
    """

    cmd: list[str]
    env: list[str]
    workdir: str = "/"
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    caps: int = 0
    privileged: bool = False
    no_new_privs: bool = True
    seccomp: bytes = b""
    rlimits: list[tuple[str, int, int]] = field(default_factory=list)
    tty_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["seccomp"] = base64.b64encode(self.seccomp).decode()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProcessSpec:
        d = dict(d)
        d["seccomp"] = base64.b64decode(d.get("seccomp") or "")
        d["rlimits"] = [tuple(r) for r in d.get("rlimits", [])]
        return cls(**{k: v for k, v in d.items() if k in _names(cls)})


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


@dataclass
class RunSpec:
    """Set up a container around ``process`` (PID 1).

    ``binds`` are ``(host source, container target, read-only)``; ``procs_files`` the ``cgroup.procs``
    files to join; ``log`` receives stdout and stderr (unless a tty), the shim writes the wait status
    to ``exit``; ``stdin`` is a file to read (``None``: /dev/null); ``readonly`` root; ``devices`` the
    /dev nodes name -> (major, minor); ``masked_paths`` / ``readonly_paths`` inside the container.
    """

    process: ProcessSpec
    rootfs: str
    hostname: str
    network: str
    log: str
    exit: str
    procs_files: list[str] = field(default_factory=list)
    readonly: bool = False
    binds: list[tuple[str, str, bool]] = field(default_factory=list)
    stdin: str | None = None
    devices: dict[str, tuple[int, int]] = field(default_factory=dict)
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["process"] = self.process.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunSpec:
        d = {k: v for k, v in d.items() if k in _names(cls)}
        d["process"] = ProcessSpec.from_json(d["process"])
        d["binds"] = [(s, t, bool(ro)) for s, t, ro in d.get("binds", [])]
        d["devices"] = {k: tuple(v) for k, v in d.get("devices", {}).items()}
        return cls(**d)


@dataclass
class ExecSpec:
    """Run ``process`` inside the running container whose PID 1 is host pid ``pid``: output to
    ``output`` (unless a tty), the wait status to ``status``, input from ``stdin`` (``None``: /dev/null)."""

    process: ProcessSpec
    pid: int
    output: str
    status: str
    procs_files: list[str] = field(default_factory=list)
    stdin: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["process"] = self.process.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ExecSpec:
        d = {k: v for k, v in d.items() if k in _names(cls)}
        d["process"] = ProcessSpec.from_json(d["process"])
        return cls(**d)
