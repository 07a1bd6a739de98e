"""Talk to a pool's daemon, starting it on demand; attach its device files to loop devices.

>>> c = PoolClient("/var/lib/labkit/snapshots/thin/pool", "/var/lib/labkit/snapshots/thin/dev")  # doctest: +SKIP
>>> c.call("create_thin", 1, 1 << 30); dev = c.attach(1)                                         # doctest: +SKIP
>>> c.detach(1); c.stop()                                                                        # doctest: +SKIP
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from .. import errors
from .._sys import loop
from .daemon import socket_address


def _error(err: dict[str, Any]) -> Exception:
    kind, msg, code = err.get("type"), err.get("message", "thin pool daemon error"), err.get("errno")
    if code == errno.ENOSPC or kind == "PoolFull":
        return OSError(errno.ENOSPC, msg)
    cls = getattr(errors, kind or "", None)
    if isinstance(cls, type) and issubclass(cls, errors.LabkitError):
        e = cls.__new__(cls)
        Exception.__init__(e, msg)
        e.subject, e.detail, e.fix = msg, None, None
        return e
    if kind == "OSError":
        return OSError(code or errno.EIO, msg)
    return errors.LabkitError(msg)


class PoolClient:
    """A connection to the daemon that owns the pool at ``pool_path`` (started if it is not running)."""

    def __init__(self, pool_path: str, mountpoint: str, *, idle: float = 2.0, start_timeout: float = 20.0) -> None:
        self.pool_path = os.path.abspath(pool_path)
        self.mountpoint = os.path.abspath(mountpoint)
        self.idle = idle
        self.start_timeout = start_timeout
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._lock = threading.Lock()
        self.tag = hashlib.sha1(self.pool_path.encode()).hexdigest()[:8]

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(socket_address(self.pool_path))
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            return False
        self._sock, self._file = s, s.makefile("rwb")
        return True

    def _start_daemon(self) -> None:
        log = open(os.path.join(self.pool_path, "daemon.log"), "ab")
        # setsid -f: the daemon is reparented to init, never a zombie of a long-lived notebook kernel
        subprocess.Popen(["setsid", "-f", sys.executable, "-m", "labkit.thin.daemon", self.pool_path, self.mountpoint,
                          "--idle", str(self.idle)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         close_fds=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        log.close()

    def connect(self) -> None:
        """Connect, starting the daemon if none answers; waits until its FUSE mount is ready."""
        if self._sock is not None:
            return
        started = False
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._connect():
                ping = self._call_raw("ping")
                if ping.get("ok", {}).get("ready"):
                    return
                self._close_sock()
            elif not started:
                self._start_daemon()
                started = True
            if time.monotonic() > deadline:
                tail = self._log_tail()
                raise errors.Unsupported(f"thin pool daemon for {self.pool_path}", f"did not start: {tail}",
                                         fix="see daemon.log in the pool directory; `labkit gc` cleans up")
            time.sleep(0.02)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.pool_path, "daemon.log"), errors="replace") as f:
                lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
            return lines[-1] if lines else "no output"
        except OSError:
            return "no log"

    def _call_raw(self, op: str, *args: Any, **kw: Any) -> dict[str, Any]:
        assert self._file is not None
        self._file.write(json.dumps({"op": op, "args": list(args), **kw}).encode() + b"\n")
        self._file.flush()
        line = self._file.readline()
        if not line:
            self._close_sock()
            raise errors.FailedPrecondition(f"thin pool daemon for {self.pool_path}", "went away",
                                            fix="run `labkit gc` and try again")
        return json.loads(line)

    def call(self, op: str, *args: Any, **kw: Any) -> Any:
        """Send one request; returns its result or raises the daemon's error (ENOSPC as ``OSError``)."""
        with self._lock:
            self.connect()
            reply = self._call_raw(op, *args, **kw)
        if "error" in reply:
            raise _error(reply["error"])
        return reply["ok"]

    def _close_sock(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def close(self) -> None:
        """Disconnect (the daemon stops by itself once idle)."""
        with self._lock:
            self._close_sock()

    def stop(self, *, timeout: float = 10.0) -> bool:
        """Ask the daemon to stop if no device is open; wait for it. Returns False if it is busy."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if self._sock is None and not self._connect():
                    return True
                try:
                    reply = self._call_raw("stop")
                except errors.FailedPrecondition:  # it went away: stopped already
                    break
                if "error" not in reply:
                    break
                # a just-detached loop device releases its file a moment later: let the daemon see it
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)
            self._close_sock()
        while self._connect() and time.monotonic() < deadline:  # the address goes when the process does
            self._close_sock()
            time.sleep(0.01)
        self._close_sock()
        return True

    # -- loop devices -------------------------------------------------------------------------
    def device_file(self, dev_id: int) -> str:
        """The FUSE file of thin device ``dev_id``."""
        return os.path.join(self.mountpoint, str(dev_id))

    def loop_of(self, dev_id: int) -> str | None:
        """The loop device attached to ``dev_id``'s file, if any."""
        f = self.device_file(dev_id)
        for lp in loop.list_loops():
            if lp.backing_file == f:
                return lp.dev
        return None

    def attach(self, dev_id: int, *, readonly: bool = False) -> str:
        """A loop device over ``dev_id`` (the one already attached, or a new one named ``labkit-thin-…``)."""
        self.connect()
        dev = self.loop_of(dev_id)
        if dev:
            return dev
        return loop.attach(self.device_file(dev_id), name=f"labkit-thin-{self.tag}-{dev_id}", readonly=readonly)

    def detach(self, dev_id: int) -> None:
        """Detach ``dev_id``'s loop device (flushing it); a no-op when none is attached."""
        dev = self.loop_of(dev_id)
        if dev is None:
            return
        try:
            fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            except OSError:
                pass  # a write already failed (pool full): the error was reported to the writer
            finally:
                os.close(fd)
            loop.detach(dev)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
        # the loop driver drops its file reference asynchronously; wait until the daemon saw the close
        deadline = time.monotonic() + 5
        while self.loop_of(dev_id) and time.monotonic() < deadline:
            time.sleep(0.005)
