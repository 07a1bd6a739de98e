"""What the runtime asks the spawner to do: typed requests, serialised as JSON over the socket.

:class:`ProcessSpec` is what the container's process becomes (command, user, capabilities, seccomp,
rlimits); :class:`RunSpec` adds what PID 1 sets up (root, mounts, hostname, network, cgroup, files);
:class:`ExecSpec` what an ``exec`` joins. Only the standard library is imported: the spawner
(``python -S``) loads this module. They are named tuples, not dataclasses: every `labkit run` makes
their classes, and a dataclass costs ~1 ms to create (docs/performance.md). Change one with ``_replace``;
the empty lists of the defaults are shared: never append to a field.

>>> p = ProcessSpec(cmd=["true"], env=["PATH=/bin"])
>>> ExecSpec.from_json(ExecSpec(process=p, pid=1, output="/o", status="/s").to_json()).process.cmd
['true']
"""
from __future__ import annotations

import binascii
from typing import Any, NamedTuple


class ProcessSpec(NamedTuple):
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
    groups: list[int] = []  # noqa: RUF012 - shared, never mutated
    caps: int = 0
    privileged: bool = False
    no_new_privs: bool = True
    seccomp: bytes = b""
    rlimits: list[tuple[str, int, int]] = []  # noqa: RUF012 - shared, never mutated
    tty_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = self._asdict()
        d["seccomp"] = binascii.b2a_base64(self.seccomp, newline=False).decode()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProcessSpec:
        d = {k: v for k, v in d.items() if k in cls._fields}
        d["seccomp"] = binascii.a2b_base64(d.get("seccomp") or "")
        d["rlimits"] = [tuple(r) for r in d.get("rlimits", [])]
        return cls(**d)


class RunSpec(NamedTuple):
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
    procs_files: list[str] = []  # noqa: RUF012 - shared, never mutated
    readonly: bool = False
    binds: list[tuple[str, str, bool]] = []  # noqa: RUF012 - shared, never mutated
    stdin: str | None = None
    devices: dict[str, tuple[int, int]] = {}  # noqa: RUF012 - shared, never mutated
    masked_paths: list[str] = []  # noqa: RUF012 - shared, never mutated
    readonly_paths: list[str] = []  # noqa: RUF012 - shared, never mutated

    def to_json(self) -> dict[str, Any]:
        d = self._asdict()
        d["process"] = self.process.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunSpec:
        d = {k: v for k, v in d.items() if k in cls._fields}
        d["process"] = ProcessSpec.from_json(d["process"])
        d["binds"] = [(s, t, bool(ro)) for s, t, ro in d.get("binds", [])]
        d["devices"] = {k: tuple(v) for k, v in d.get("devices", {}).items()}
        return cls(**d)


class ExecSpec(NamedTuple):
    """Run ``process`` inside the running container whose PID 1 is host pid ``pid``: output to
    ``output`` (unless a tty), the wait status to ``status``, input from ``stdin`` (``None``: /dev/null)."""

    process: ProcessSpec
    pid: int
    output: str
    status: str
    procs_files: list[str] = []  # noqa: RUF012 - shared, never mutated
    stdin: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = self._asdict()
        d["process"] = self.process.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ExecSpec:
        d = {k: v for k, v in d.items() if k in cls._fields}
        d["process"] = ProcessSpec.from_json(d["process"])
        return cls(**d)
