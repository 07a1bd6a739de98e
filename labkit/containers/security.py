"""A container's security profile in one place: capabilities, no_new_privs, seccomp, masked and
read-only paths, devices, rlimits - Docker/runc's defaults, with ``privileged`` as the opt-out.

======================  ====================================================  =========================
what                    default (as ``docker run``)                           ``privileged=True``
======================  ====================================================  =========================
capabilities            Docker's 14 (:mod:`labkit.containers.capabilities`),   every capability the
                        changed by ``cap_add`` / ``cap_drop``                  caller has
no_new_privs            on: setuid binaries and file capabilities cannot       off
                        raise privileges after exec
seccomp                 Docker's default profile (:mod:`.seccomp`), mode 2    none (mode 0)
masked paths            :data:`MASKED_PATHS`: ``/dev/null`` bound over files,  none
                        an empty read-only tmpfs over directories
read-only paths         :data:`READONLY_PATHS` (``/proc/sys``,                 none
                        ``/proc/sysrq-trigger``...), ``/sys``
devices                 :data:`DEVICES` only: the nodes are bind mounts of     every device (cgroup
                        the host's, every other mount is ``nodev`` (so a       allows all, no
                        node made with ``mknod`` cannot be opened), and on     ``nodev``)
                        cgroup v1 the devices controller allows just
                        :data:`DEVICE_RULES`
rlimits                 :func:`default_rlimits`                               the same
======================  ====================================================  =========================

Read-only mounts (``readonly=True``, ``:ro`` binds, the read-only paths) are set with
``mount_setattr(AT_RECURSIVE)`` so every mount below them is read-only too; changing them back needs
mount(2) and CAP_SYS_ADMIN, which the container has neither of (seccomp and capabilities).

On cgroup v2 labkit installs no device BPF program: there the ``nodev`` mounts alone keep a
hand-made device node from being opened.

>>> p = Profile.make(cap_drop=["NET_RAW"])
>>> "CAP_NET_RAW" in p.caps, p.no_new_privs, p.seccomp
(False, True, True)
>>> Profile.make(privileged=True).seccomp
False
"""
from __future__ import annotations

import resource
from collections.abc import Iterable

from .._sys.record import Record, field
from . import capabilities

#: moby's default masked paths (oci/defaults.go): hidden from the container
MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap")
#: moby's default read-only paths
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

#: the device nodes in the container's /dev: name -> (major, minor) of a character device
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
#: the cgroup v1 devices allowlist (Docker's default without tun): mknod of anything, I/O only on these
DEVICE_RULES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm")

#: the limit labkit asks for open files (Docker's daemon runs with 1048576); clamped to the caller's
#: hard limit, since raising a hard limit needs CAP_SYS_RESOURCE (on the lab VM root's is 20000)
NOFILE = 1 << 20


def default_rlimits() -> list[tuple[str, int, int]]:
    """``(name, soft, hard)`` for the container: ``NOFILE`` = min(caller's hard limit, 1048576) for both,
    ``CORE`` 0 (no core files written into the root filesystem); everything else, ``NPROC`` included,
    is inherited from the caller (the pids cgroup limit is the per-container bound).

    >>> dict((n, (s, h)) for n, s, h in default_rlimits())["CORE"]
    (0, 0)
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = NOFILE if hard == resource.RLIM_INFINITY else min(hard, NOFILE)
    return [("NOFILE", nofile, nofile), ("CORE", 0, 0)]


class Profile(Record):
    """What a container's processes may do; stored with the container so ``exec`` applies the same."""

    caps: frozenset[str] = capabilities.DEFAULT
    privileged: bool = False
    no_new_privs: bool = True
    seccomp: bool = True
    masked_paths: tuple[str, ...] = MASKED_PATHS
    readonly_paths: tuple[str, ...] = READONLY_PATHS
    rlimits: tuple[tuple[str, int, int], ...] = field(default_factory=lambda: tuple(default_rlimits()))

    @classmethod
    def make(cls, *, cap_add: Iterable[str] | None = None, cap_drop: Iterable[str] | None = None,
             privileged: bool = False, base: frozenset[str] | None = None) -> Profile:
        """Docker's default, tweaked by ``cap_add``/``cap_drop`` (relative to ``base``, e.g. a running
        container's set for ``exec``), or everything off with ``privileged``."""
        if privileged:
            return cls(caps=capabilities.ALL, privileged=True, no_new_privs=False, seccomp=False,
                       masked_paths=(), readonly_paths=())
        caps = capabilities.resolve(cap_add=cap_add, cap_drop=cap_drop, base=base)
        return cls(caps=caps)

    def to_json(self) -> dict:
        return {"caps": sorted(self.caps), "privileged": self.privileged, "no_new_privs": self.no_new_privs,
                "seccomp": self.seccomp, "masked_paths": list(self.masked_paths),
                "readonly_paths": list(self.readonly_paths), "rlimits": [list(r) for r in self.rlimits]}

    @classmethod
    def from_json(cls, d: dict | None) -> Profile:
        """Read :meth:`to_json`'s dict; a state written before profiles existed reads as privileged
        (that is what such a container ran with)."""
        if not d:
            return cls.make(privileged=True)
        return cls(caps=frozenset(d["caps"]), privileged=bool(d["privileged"]),
                   no_new_privs=bool(d["no_new_privs"]), seccomp=bool(d["seccomp"]),
                   masked_paths=tuple(d.get("masked_paths", ())), readonly_paths=tuple(d.get("readonly_paths", ())),
                   rlimits=tuple(tuple(r) for r in d.get("rlimits", ())))
