"""Host processes by pid *and* start time, so a recycled pid is never mistaken for ours; pidfd waits and
signals.

``/proc/<pid>/stat`` field 22 is the start time in clock ticks since boot: the pair (pid, start time)
names one process for the life of the machine. Signals go through a pidfd opened and then checked
against that start time, so the signal reaches the process that was checked even if it exits and its
pid is reused in between (the pidfd keeps naming the dead one; the signal then fails with ESRCH).

>>> import os
>>> starttime(os.getpid()) == starttime(os.getpid()) is not None
True
>>> alive(os.getpid(), starttime(os.getpid())), alive(os.getpid(), -1)
(True, False)
"""
from __future__ import annotations

import os
import select
import signal


def starttime(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat; ``None`` when the process is gone or a zombie (dead, only not yet
    reaped by its new parent)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int | None, start: int | None) -> bool:
    """True while the process ``pid`` that started at ``start`` runs (not a zombie)."""
    return bool(pid) and start is not None and starttime(pid) == start  # type: ignore[arg-type]


def wait_pid(pid: int, timeout: float | None) -> bool:
    """Wait (with a pidfd, no polling) until ``pid`` exits; False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(None if timeout is None else max(0, int(timeout * 1000))))
    finally:
        os.close(fd)


def send_signal(pid: int | None, start: int | None, sig: int) -> bool:
    """Send ``sig`` to the process (``pid``, ``start``) through a pidfd; False when it is gone."""
    if not pid or start is None:
        return False
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if starttime(pid) != start:      # checked after pinning: the pidfd names this very process
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
