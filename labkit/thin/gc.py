"""``labkit gc`` for the thin pool: daemons (root processes whose command line has the word
``labkit.thin.daemon`` followed by the pool) serving a pool inside the store, or, with ``everything``, any
labkit pool daemon. A process of another user is never taken for one, whatever its command line says.
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


def pool_daemons(root: str, everything: bool) -> list[tuple[int, str]]:
    """(pid, command line) of the pool daemons of the store at ``root`` (every one with ``everything``)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if "labkit.thin.daemon" not in argv:
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
                continue  # anyone can name a process like ours: only our own user's are daemons
        except OSError:
            continue
        at = argv.index("labkit.thin.daemon") + 1
        pool = argv[at] if at < len(argv) else ""
        if everything or (pool and inside(os.path.realpath(pool), root)):
            out.append((int(pid), " ".join(argv)))
    return out


def _terminate(pid: int) -> None:
    """SIGTERM, wait up to 2 s for a clean exit (the daemon unmounts its FUSE export), then SIGKILL —
    through a pidfd opened first and checked to still be a pool daemon, so a recycled pid is never hit."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"labkit.thin.daemon" not in f.read().split(b"\0"):
                    return                       # the pid was reused between the scan and now
        except OSError:
            return
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
    return [Leftover("process", str(pid), args, partial(_terminate, pid))
            for pid, args in pool_daemons(root, everything)]
