"""Talk to a pool's daemon with :class:`Pool`'s own methods and types; attach its device files to loop devices.

:class:`PoolClient` offers what :class:`labkit.thin.Pool` offers — ``devices``, ``create_thin``,
``create_snap``, ``delete``, ``commit``, ``status``, ``usage``, ``usages``, ``mappings``, ``sharing``,
``block_map``, ``details``, ``check`` — with the same return types (:class:`Status`, :class:`Usage`,
:class:`BlockInfo`, :class:`DeviceDetails`, :class:`CheckReport`) and the same exceptions (the daemon's
``NotFound``, ``AlreadyExists``, ``PoolFull`` ... rebuilt by their constructors), plus what only a
client has: ``attach``/``detach``/``loop_of``/``device_file``, ``daemon_info``, ``stop`` and ``close``.

The daemon is started on demand (one per pool: a second starter waits for the first, then connects) and
outlives the client while loop devices over its files are in use; it stops itself when idle. A loop device
this client attaches is held open by the client and set to auto-clear, so the kernel tears it down when the
last user lets go — this client's :meth:`close`, the unmount of a container's root, another process's
close — and no process ever detaches a device another one still uses.

>>> c = PoolClient("/var/lib/labkit/snapshots/thin/pool", "/var/lib/labkit/snapshots/thin/dev")  # doctest: +SKIP
>>> c.create_thin(1, 1 << 30); dev = c.attach(1); c.status().used_data_blocks                  # doctest: +SKIP
0
>>> c.detach(1); c.stop(); c.close()                                                          # doctest: +SKIP
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from .. import errors
from .._sys import loop
from . import loopdev, wire
from .check import CheckReport
from .records import BlockInfo, DeviceDetails, Status, Usage

__all__ = ["PoolClient", "DaemonInfo"]

log = logging.getLogger("labkit.thin.client")

#: the directory that holds the ``labkit`` package: the daemon imports labkit from here and nowhere else
_LABKIT_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: requests that may be sent again after the connection broke (the daemon may have done them once)
_IDEMPOTENT = frozenset({"ping", "devices", "commit", "status", "usage", "usages", "mappings", "sharing",
                         "block_map", "details", "check"})
_DAEMON_ENV_PASS = ("FUSE_LIBRARY_PATH",)  # which libfuse mfusepy loads (HOST-NOTES)


@dataclass(frozen=True)
class DaemonInfo:
    """What the daemon says about itself: its pid, whether its FUSE export is up, open device files,
    connected clients, and the pool's block size and size in blocks."""

    pid: int
    ready: bool
    open: int
    clients: int
    block_size: int
    nr_data_blocks: int


def _daemon_info(d: dict[str, Any]) -> DaemonInfo:
    names = DaemonInfo.__dataclass_fields__
    return DaemonInfo(**{k: v for k, v in d.items() if k in names})


class _Gone(Exception):
    """The connection broke; ``sent`` says whether the request may have reached the daemon."""

    def __init__(self, sent: bool) -> None:
        super().__init__("connection to the thin pool daemon broke")
        self.sent = sent


class PoolClient:
    """A connection to the daemon that owns the pool at ``pool_path`` (started when needed), which
    exports its devices under ``mountpoint``. ``idle``: seconds the daemon lingers unused (-1: forever)."""

    def __init__(self, pool_path: str, mountpoint: str, *, idle: float = 2.0, start_timeout: float = 20.0) -> None:
        self.pool_path = os.path.abspath(pool_path)
        self.mountpoint = os.path.abspath(mountpoint)
        self.idle = idle
        self.start_timeout = start_timeout
        self.tag = hashlib.sha1(self.pool_path.encode()).hexdigest()[:8]
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._info: DaemonInfo | None = None
        self._lock = threading.RLock()        # one request at a time on the connection
        self._loop_lock = threading.Lock()
        self._held: dict[int, tuple[str, int]] = {}   # dev id -> (loop device, our open fd on it)

    def __enter__(self) -> PoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PoolClient {self.pool_path!r}{' connected' if self._sock else ''}>"

    # -- connection -------------------------------------------------------------------------------
    def connect(self, *, start: bool = True) -> bool:
        """Connect to the pool's daemon, starting it (and waiting until its FUSE export is up) when none
        answers. With ``start=False`` only an already running daemon is used; returns whether one is.

        Raises :class:`~labkit.errors.Unsupported` (with the daemon's last log line) when it does not come
        up within ``start_timeout``, :class:`~labkit.errors.FailedPrecondition` when the socket is served
        by a process of another user or the daemon serves too many clients.
        """
        with self._lock:
            if self._sock is not None:
                return True
            if self._try_connect() or not start:
                return self._sock is not None
            deadline = time.monotonic() + self.start_timeout
            ctl = wire.open_ctl_dir(self.pool_path, create=True)
            try:
                lock = os.open(wire.START_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                               dir_fd=ctl)
            finally:
                os.close(ctl)
            try:  # one starter at a time; the others find the daemon up when they get the lock
                self._flock(lock, deadline)
                proc: subprocess.Popen[bytes] | None = None
                while not self._try_connect():
                    if proc is not None and proc.returncode not in (None, 0):
                        raise self._did_not_start(f"exited with status {proc.returncode}")
                    if proc is None or proc.returncode == 0:  # none yet, or it ran and already stopped
                        proc = self._spawn()
                    if time.monotonic() > deadline:
                        raise self._did_not_start(f"did not answer within {self.start_timeout:g} s")
                    time.sleep(0.02)
                return True
            finally:
                os.close(lock)

    def _flock(self, fd: int, deadline: float) -> None:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise errors.FailedPrecondition(f"thin pool daemon for {self.pool_path}",
                                                    "is being started by another process that does not finish",
                                                    fix="see daemon.log in the pool directory; `labkit gc`") from None
                time.sleep(0.02)

    def _try_connect(self) -> bool:
        """Connect and ping: True when a ready daemon answered (the connection is then kept)."""
        try:
            ctl = wire.open_ctl_dir(self.pool_path, create=False)
        except FileNotFoundError:
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            try:
                s.connect(wire.sock_address(ctl))
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                return False
        finally:
            os.close(ctl)
        pid, uid, _gid = wire.peer_cred(s)
        if not wire.allowed_uid(uid):
            s.close()
            raise errors.FailedPrecondition(f"thin pool socket of {self.pool_path}",
                                            f"is served by pid {pid} of uid {uid}, not by root",
                                            fix="stop that process; only root's labkit-thin daemon may serve a pool")
        self._sock, self._file = s, s.makefile("rwb")
        try:
            reply = self._exchange("ping", ())
        except _Gone:
            return False  # it was stopping: the caller starts a new one
        if "error" in reply:
            self._drop()
            raise wire.decode_error(reply["error"])
        info = _daemon_info(reply["ok"])
        if not info.ready:
            self._drop()
            return False
        self._info = info
        return True

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start the daemon isolated from this process: ``python -I`` (no PYTHON* variables, no cwd or
        script directory on sys.path; labkit comes from :data:`_LABKIT_PARENT` only), cwd ``/``, a minimal
        environment, stdin ``/dev/null``, output to ``daemon.log``, its own session."""
        code = (f"import sys; sys.path.insert(0, {_LABKIT_PARENT!r}); "
                "from labkit.thin.daemon import serve_and_exit; serve_and_exit(sys.argv[2:])")
        argv = [sys.executable, "-I", "-c", code, "labkit.thin.daemon", self.pool_path, self.mountpoint,
                "--idle", str(self.idle)]
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        env.update({k: os.environ[k] for k in _DAEMON_ENV_PASS if k in os.environ})
        logfd = os.open(os.path.join(self.pool_path, "daemon.log"),
                        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logfd, stderr=logfd, cwd="/", env=env,
                                    close_fds=True, start_new_session=True)
        finally:
            os.close(logfd)
        threading.Thread(target=proc.wait, daemon=True, name="labkit-thin-reaper").start()  # never a zombie
        return proc

    def _did_not_start(self, why: str) -> errors.Unsupported:
        return errors.Unsupported(f"thin pool daemon for {self.pool_path}", f"{why}: {self._log_tail()}",
                                  fix="see daemon.log in the pool directory; `labkit gc` cleans up")

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.pool_path, "daemon.log"), errors="replace") as f:
                lines = [ln.strip() for ln in f.read().splitlines()[-50:] if ln.strip()]
            return lines[-1] if lines else "no output"
        except OSError:
            return "no log"

    def _drop(self) -> None:
        for c in (self._file, self._sock):
            if c is not None:
                try:
                    c.close()
                except OSError:
                    pass
        self._sock = self._file = None

    def _exchange(self, op: str, args: tuple[Any, ...]) -> dict[str, Any]:
        sent = True
        try:
            self._file.write(wire.encode({"op": op, "args": list(args)}))
            self._file.flush()
        except OSError:  # EPIPE/ECONNRESET: the daemon had closed; it never saw this request
            sent = False  # (but it may have said why before closing: "serves 16 clients already")
        try:
            line = self._file.readline()
        except OSError:
            line = b""
        if not line:
            self._drop()
            raise _Gone(sent=sent)
        if not sent:
            self._drop()
        try:
            reply = json.loads(line)
        except ValueError:
            self._drop()
            raise errors.LabkitError(f"thin pool daemon for {self.pool_path}", "sent a malformed reply",
                                     fix="see daemon.log in the pool directory") from None
        if not isinstance(reply, dict):
            self._drop()
            raise errors.LabkitError(f"thin pool daemon for {self.pool_path}", "sent a malformed reply")
        return reply

    def _call(self, op: str, *args: Any) -> Any:
        """Send one request; return its result or raise the daemon's error. A broken connection is
        reopened (starting a daemon if needed) and the request sent again when that is safe: when it
        cannot have arrived, or when doing it twice does no harm."""
        with self._lock:
            for attempt in (1, 2):
                self.connect()
                try:
                    reply = self._exchange(op, args)
                    break
                except _Gone as g:
                    if attempt == 1 and (op in _IDEMPOTENT or not g.sent):
                        log.info("thin pool daemon for %s went away during %s: reconnecting", self.pool_path, op)
                        continue
                    unknown = "; whether it was done is unknown" if g.sent and op not in _IDEMPOTENT else ""
                    raise errors.FailedPrecondition(f"thin pool daemon for {self.pool_path}",
                                                    f"went away during {op}{unknown}",
                                                    fix="look with devices() and retry; `labkit gc` cleans up "
                                                        "after a crash") from None
        if "error" in reply:
            raise wire.decode_error(reply["error"])
        return reply.get("ok")

    def close(self) -> None:
        """Let go of this client's loop devices (each goes once nobody else uses it: a mounted one stays
        until it is unmounted) and disconnect. Never waits for the daemon, which stops itself when idle.
        Closing twice is fine."""
        self.release()
        with self._lock:
            self._drop()

    def stop(self, *, wait: float = 5.0) -> bool:
        """Let go of this client's loop devices and ask the daemon to stop as soon as it is idle; never
        retries. Returns True when it stopped now (waiting up to ``wait`` seconds for its exit, after its
        unmount and last commit) or none was running; False when devices are open or other clients are
        connected, in which case it stops by itself once they are gone."""
        self.release()
        with self._lock:
            if not self.connect(start=False):
                return True
            try:
                answer = self._exchange("stop", ())
            except _Gone:
                return True
            if "error" in answer:
                self._drop()
                raise wire.decode_error(answer["error"])
            if not answer["ok"].get("stopping"):
                return False
            sock = self._sock
            assert sock is not None
            sock.settimeout(wait)
            try:
                while sock.recv(4096):  # the daemon closes our connection by exiting
                    pass
                gone = True
            except (TimeoutError, OSError):
                gone = False
            self._drop()
            return gone

    def daemon_info(self) -> DaemonInfo:
        """The daemon's :class:`DaemonInfo` (asks it now)."""
        info = _daemon_info(self._call("ping"))
        self._info = info
        return info

    @property
    def block_size(self) -> int:
        """The pool's data block size in bytes."""
        if self._info is None:
            self.connect()
        assert self._info is not None
        return self._info.block_size

    # -- the pool's methods ---------------------------------------------------------------------------
    def devices(self) -> list[int]:
        """Ids of the thin devices, sorted (:meth:`Pool.devices`)."""
        return [int(d) for d in self._call("devices")]

    def create_thin(self, dev_id: int, virtual_size: int | str) -> None:
        """Create an empty thin device (:meth:`Pool.create_thin`); durable when it returns."""
        self._call("create_thin", dev_id, virtual_size)

    def create_snap(self, dev_id: int, origin_id: int) -> None:
        """Create ``dev_id`` as a snapshot of ``origin_id`` (:meth:`Pool.create_snap`); durable when it returns."""
        self._call("create_snap", dev_id, origin_id)

    def delete(self, dev_id: int) -> None:
        """Delete a thin device (:meth:`Pool.delete`); durable when it returns."""
        self._call("delete", dev_id)

    def commit(self) -> int:
        """Commit the pool; returns the transaction id (:meth:`Pool.commit`)."""
        return int(self._call("commit"))

    def status(self) -> Status:
        """The pool's :class:`Status` (``str()``: the dm-thin status line)."""
        return Status(**self._call("status"))

    def usage(self, dev_id: int) -> Usage:
        """Mapped, exclusive and shared blocks of ``dev_id`` (:meth:`Pool.usage`)."""
        return Usage(**self._call("usage", dev_id))

    def usages(self) -> dict[int, Usage]:
        """:meth:`usage` of every device, from one walk (:meth:`Pool.usages`)."""
        return {int(k): Usage(**v) for k, v in self._call("usages").items()}

    def mappings(self, dev_id: int) -> list[tuple[int, int, int]]:
        """``(virtual block, data block, time)`` of every mapping of ``dev_id`` (:meth:`Pool.mappings`)."""
        return [(vb, db, t) for vb, db, t in self._call("mappings", dev_id)]

    def sharing(self, dev_id: int) -> list[tuple[int, int, tuple[int, ...]]]:
        """``(virtual block, data block, other devices mapping it)`` per mapping (:meth:`Pool.sharing`)."""
        return [(vb, db, tuple(others)) for vb, db, others in self._call("sharing", dev_id)]

    def block_map(self, dev_id: int) -> list[BlockInfo]:
        """One :class:`BlockInfo` per virtual block of ``dev_id`` (:meth:`Pool.block_map`)."""
        return [BlockInfo(state, db) for state, db in self._call("block_map", dev_id)]

    def details(self, dev_id: int) -> DeviceDetails:
        """What the pool records about ``dev_id`` (:meth:`Pool.details`)."""
        return DeviceDetails(**self._call("details", dev_id))

    def check(self) -> CheckReport:
        """The daemon's check of its pool (:meth:`Pool.check`)."""
        return CheckReport(**self._call("check"))

    # -- loop devices -------------------------------------------------------------------------------
    def device_file(self, dev_id: int) -> str:
        """The FUSE file of thin device ``dev_id``."""
        return os.path.join(self.mountpoint, str(dev_id))

    def loop_of(self, dev_id: int) -> str | None:
        """The loop device attached to ``dev_id``'s file, if any (by any process)."""
        f = self.device_file(dev_id)
        for lp in loop.list_loops():
            if lp.backing_file == f:
                return lp.dev
        return None

    def attach(self, dev_id: int, *, readonly: bool = False) -> str:
        """A loop device over ``dev_id``: the one already attached (by any process) or a new one named
        ``labkit-thin-<pool>-<id>``. This client holds it open and it auto-clears (:mod:`.loopdev`), so it
        stays while this client or any other user (a mount, another process) has it, and goes after the
        last one."""
        self.connect()
        f = self.device_file(dev_id)
        with self._loop_lock:
            held = self._held.get(dev_id)
            if held is not None:
                if loopdev.backing_file(held[0]) == f:
                    return held[0]
                os.close(held[1])
                del self._held[dev_id]
            dev = self.loop_of(dev_id)
            fd = loopdev.hold(dev, f) if dev is not None else None
            if dev is None or fd is None:
                dev, fd = loopdev.attach_held(f, name=f"labkit-thin-{self.tag}-{dev_id}", readonly=readonly)
            self._held[dev_id] = (dev, fd)
            return dev

    def release(self, dev_id: int | None = None) -> None:
        """Close this client's hold on ``dev_id``'s loop device (every one when None): the kernel tears
        it down unless someone else (a mount, another process) still uses it."""
        with self._loop_lock:
            ids = list(self._held) if dev_id is None else [dev_id] if dev_id in self._held else []
            for i in ids:
                _dev, fd = self._held.pop(i)
                os.close(fd)

    def detach(self, dev_id: int) -> None:
        """Flush and detach ``dev_id``'s loop device, whoever attached it, and wait until it is gone (up to
        5 s; a device still mounted or open elsewhere goes when its last user lets go). A no-op when none
        is attached. For a device that must go now: before commit, delete or remove."""
        with self._loop_lock:
            held = self._held.pop(dev_id, None)
        if held is not None:
            try:
                os.fsync(held[1])
            except OSError:
                pass  # a write already failed (pool full): the error was reported to the writer
            os.close(held[1])
        dev = self.loop_of(dev_id)
        if dev is None:
            return
        try:
            fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)
            loop.detach(dev)
        except OSError as e:
            if e.errno not in (errno.ENXIO, errno.ENOENT):
                raise
        # the loop driver drops its file reference asynchronously; wait until it has
        deadline = time.monotonic() + 5
        while self.loop_of(dev_id) and time.monotonic() < deadline:
            time.sleep(0.005)
