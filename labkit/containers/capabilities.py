"""Linux capabilities of a container: Docker's default set, ``cap_add``/``cap_drop``, ``privileged``.

Root in a container is not root on the host because it holds only a few capabilities. labkit gives
the 14 of Docker's default (moby ``oci/caps/defaults.go``): CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD
NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE - the mask
``00000000a80425fb`` that ``/proc/self/status`` shows as ``CapEff`` in a ``docker run``.

What goes in which set follows Docker after CVE-2022-24769 (moby ``oci.SetCapabilities``):

=================  ==================================  ===================================
set                uid 0 in the container              any other uid
=================  ==================================  ===================================
bounding           the container's set                 the container's set
permitted          the container's set                 empty (as execve gives a non-root uid)
effective          the container's set                 empty
inheritable        empty                               empty
ambient            empty                               empty
=================  ==================================  ===================================

(Inheritable and ambient sets holding the 14 would let a non-root program with inheritable file
capabilities gain them: that was CVE-2022-24769, and why Docker and labkit leave both empty.)
``privileged=True`` keeps every capability the caller has (on this host root lacks SYS_RESOURCE).

:func:`resolve` applies ``cap_add`` and ``cap_drop`` exactly like Docker's ``TweakCapabilities``:
names with or without ``CAP_``, any case; ``"ALL"`` in ``cap_add`` starts from every capability,
``"ALL"`` in ``cap_drop`` from none.

>>> sorted(resolve(cap_drop=["net_raw", "CAP_MKNOD"]) ^ DEFAULT)
['CAP_MKNOD', 'CAP_NET_RAW']
>>> resolve(cap_drop=["ALL"], cap_add=["chown"])
frozenset({'CAP_CHOWN'})
>>> hex(mask(DEFAULT))
'0xa80425fb'
"""
from __future__ import annotations

from collections.abc import Iterable

from labkit import errors

#: capability number -> name (include/uapi/linux/capability.h, up to Linux 5.9's CHECKPOINT_RESTORE)
NAMES = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
         "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
         "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
         "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
         "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
         "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
         "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
         "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE")
NUMBER = {n: i for i, n in enumerate(NAMES)}
ALL = frozenset(NAMES)

#: Docker's default set (moby oci/caps/defaults.go)
DEFAULT = frozenset({"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                     "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                     "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"})


def normalize(names: Iterable[str] | None) -> list[str]:
    """``["net_raw", "CAP_KILL", "all"]`` -> ``["CAP_NET_RAW", "CAP_KILL", "ALL"]``; an unknown name is an
    ``InvalidArgument`` naming it."""
    if isinstance(names, str):
        names = [names]
    out = []
    for n in names or ():
        u = str(n).strip().upper()
        if u == "ALL":
            out.append("ALL")
            continue
        u = u if u.startswith("CAP_") else "CAP_" + u
        if u not in NUMBER:
            raise errors.InvalidArgument(f"capability {n!r}", "unknown",
                                         fix="use a name from capabilities(7), e.g. NET_ADMIN, or ALL")
        out.append(u)
    return out


def resolve(*, cap_add: Iterable[str] | None = None, cap_drop: Iterable[str] | None = None,
            privileged: bool = False, base: frozenset[str] | None = None) -> frozenset[str]:
    """The capability set from ``base`` (Docker's default), ``cap_add``, ``cap_drop``, ``privileged``."""
    add, drop = normalize(cap_add), normalize(cap_drop)
    if privileged:
        return ALL
    if "ALL" in add:
        return frozenset(c for c in ALL if c not in drop)
    if "ALL" in drop:
        return frozenset(c for c in add if c != "ALL")
    return frozenset(((DEFAULT if base is None else base) - set(drop)) | set(add))


def mask(names: Iterable[str]) -> int:
    """Bit mask of ``names`` (as ``CapEff`` in /proc/<pid>/status shows it)."""
    m = 0
    for n in names:
        m |= 1 << NUMBER[n]
    return m


def names(m: int) -> list[str]:
    """The names of the bits set in ``m`` (unknown high bits are left out).

    >>> names(0x3)
    ['CAP_CHOWN', 'CAP_DAC_OVERRIDE']
    """
    return [n for i, n in enumerate(NAMES) if m >> i & 1]
