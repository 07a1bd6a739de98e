"""``labkit gc`` for the thin pool: daemons serving a pool inside the store, or, with ``everything``, any
labkit pool daemon. A daemon is a process of this user that is either a started interpreter whose command
line has the word ``labkit.thin.daemon`` followed by the pool, or a forked one (its command line is its
caller's) named ``labkit-thin`` that holds the pool's ``metadata`` file open (a pool has one owner: the
metadata file's ``flock``). A process of another user is never taken for one, whatever it calls itself.
Importing this module registers the collector.

>>> from labkit.thin.gc import daemon_leftovers
>>> daemon_leftovers("/nonexistent/labkit-store", False)
[]
"""
from __future__ import annotations

import os
import select
import signal
from functools import partial

from .._sys import leftovers
from .._sys.leftovers import Leftover, collector, inside

__all__ = ["daemon_leftovers", "pool_daemons"]

WORD = "labkit.thin.daemon"      #: a started daemon's command line names its pool after this word
NAME = "labkit-thin"             #: every daemon's process name (``/proc/PID/comm``)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _held_pool(pid: str) -> str:
    """The pool whose ``metadata`` file process ``pid`` holds open ("" when none)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return ""
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if os.path.basename(target) == "metadata" and target.startswith("/"):
            pool = os.path.dirname(target)
            if os.path.isdir(os.path.join(pool, "ctl")):
                return pool
    return ""


def _identify(pid: str) -> tuple[str, str] | None:
    """``(pool, description)`` when ``pid`` is a pool daemon of this user ("" for a pool not known yet:
    a forked daemon still starting), else None."""
    raw = _read(f"/proc/{pid}/cmdline")
    if raw is None:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    forked = (_read(f"/proc/{pid}/comm") or b"").strip() == NAME.encode() and WORD not in argv
    if WORD not in argv and not forked:
        return None
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
            return None   # anyone can name a process like ours: only our own user's are daemons
    except OSError:
        return None
    if forked:
        pool = _held_pool(pid)
        return pool, f"{NAME} {pool or '(pool not open yet)'} (forked by: {' '.join(argv)})"
    at = argv.index(WORD) + 1
    return (argv[at] if at < len(argv) else ""), " ".join(argv)


def pool_daemons(root: str, everything: bool) -> list[tuple[int, str]]:
    """(pid, description) of the pool daemons of the store at ``root`` (every one with ``everything``)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        found = _identify(pid)
        if found is None:
            continue
        pool, what = found
        if everything or (pool and inside(os.path.realpath(pool), root)):
            out.append((int(pid), what))
    return out


def _terminate(pid: int) -> None:
    """SIGTERM, wait up to 2 s for a clean exit (the daemon unmounts its FUSE export), then SIGKILL —
    through a pidfd opened first and checked to still be a pool daemon, so a recycled pid is never hit."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if _identify(str(pid)) is None:
            return                       # the pid was reused between the scan and now
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        if not select.select([fd], [], [], 2.0)[0]:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            select.select([fd], [], [], 2.0)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


@collector(order=leftovers.PROCESSES)
def daemon_leftovers(root: str, everything: bool) -> list[Leftover]:
    """Thin pool daemons (FUSE) serving a pool inside the store."""
    return [Leftover("process", str(pid), what, partial(_terminate, pid))
            for pid, what in pool_daemons(root, everything)]
