"""Talk to a pool's daemon with :class:`Pool`'s own methods and types; attach its device files to loop devices.

:class:`PoolClient` offers what :class:`labkit.thin.Pool` offers — ``devices``, ``create_thin``,
``create_snap``, ``delete``, ``commit``, ``status``, ``usage``, ``usages``, ``mappings``, ``sharing``,
``block_map``, ``details``, ``check`` — with the same return types (:class:`Status`, :class:`Usage`,
:class:`BlockInfo`, :class:`DeviceDetails`, :class:`CheckReport`) and the same exceptions (the daemon's
``NotFound``, ``AlreadyExists``, ``PoolFull`` ... rebuilt by their constructors), plus what only a
client has: ``attach``/``detach``/``loop_of``/``device_file``, ``daemon_info``, ``stop`` and ``close``.

The daemon is started on demand (one per pool: a second starter waits for the first, then connects) and
outlives the client while loop devices over its files are in use; it stops itself when idle. It says it
is ready through a pipe (no polling). A process with one thread **forks** it (``start_method="auto"``: a
CLI, a script; ~45 ms); a process with threads (a Jupyter kernel) starts a new interpreter (``python -I
-S``; ~100 ms of interpreter start and imports). Either way it is isolated from its caller: its own
session, cwd ``/``, a minimal environment, stdin ``/dev/null``, output to ``daemon.log``, no inherited
descriptor but its own, and a ``sys.path`` of labkit's directory and the interpreter's own directories only
(never ``''``, the caller's cwd, ``PYTHONPATH`` or the user's site-packages). A loop device
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
import json
import os
import select
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from .. import errors
from .._sys import loop
from . import loopdev, wire

if TYPE_CHECKING:  # imported where they are made: a `labkit run` needs none of them (docs/performance.md)
    import logging
    import subprocess  # a daemon is forked unless this process has threads (~3 ms with selectors)

    from .check import CheckReport
    from .records import BlockInfo, DeviceDetails, Status, Usage

__all__ = ["PoolClient", "DaemonInfo", "START_METHODS"]

#: how :meth:`PoolClient.connect` starts a daemon: ``auto`` forks it when this process has one thread and
#: starts a new interpreter otherwise; ``fork`` (refused in a process with threads); ``exec``
START_METHODS = ("auto", "fork", "exec")

#: the directory that holds the ``labkit`` package: the daemon imports labkit from here and nowhere else
_LABKIT_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: requests that may be sent again after the connection broke (the daemon may have done them once)
_IDEMPOTENT = frozenset({"ping", "devices", "commit", "status", "usage", "usages", "mappings", "sharing",
                         "block_map", "details", "check"})
_DAEMON_ENV_PASS = ("FUSE_LIBRARY_PATH",)  # which libfuse mfusepy loads (HOST-NOTES)
_DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: what a forked daemon inherited and must never let go of (a finalizer would close a descriptor number
#: that the daemon's own files may have taken by then)
_INHERITED: list[Any] = []


def _log() -> logging.Logger:
    """This module's logger, imported when something is logged: importing ``logging`` registers an
    ``atexit`` callback, and a CLI process with one ends through the interpreter's teardown (15-25 ms)."""
    import logging
    return logging.getLogger("labkit.thin.client")


def _sha1_hex(data: bytes) -> str:
    """SHA-1 from CPython's own implementation (hashlib's would load OpenSSL: 3-6 ms of a CLI's start)."""
    try:
        from _sha1 import sha1  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from hashlib import sha1
    return str(sha1(data).hexdigest())


def single_threaded() -> bool:
    """Whether this process has one thread, by the kernel's count (which also sees the threads Python's
    ``threading`` does not: a Jupyter kernel's ZeroMQ threads, a BLAS pool). Forking is safe only then."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def isolated_path() -> list[str]:
    """The daemon's ``sys.path``: labkit's parent directory, then this interpreter's own directories (the
    standard library and the site-packages under ``sys.prefix`` and ``sys.base_prefix``), which is what
    ``python -I`` searches; never ``''``, the caller's working directory, ``PYTHONPATH`` outside them or the
    user's site-packages.

    >>> isolated_path()[0] == _LABKIT_PARENT and "" not in isolated_path()
    True
    """
    prefixes = tuple({os.path.realpath(p).rstrip("/") + "/"
                      for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)} - {"/"})
    out = [_LABKIT_PARENT]
    for p in sys.path:
        if p and os.path.isabs(p) and p not in out and (os.path.realpath(p) + "/").startswith(prefixes):
            out.append(p)
    return out


def _daemon_env() -> dict[str, str]:
    env = {"PATH": _DAEMON_PATH, "LANG": "C.UTF-8"}
    env.update({k: os.environ[k] for k in _DAEMON_ENV_PASS if k in os.environ})
    return env


def _open_log(pool_path: str) -> int:
    return os.open(os.path.join(pool_path, "daemon.log"),
                   os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _fork_daemon(pool_path: str, mountpoint: str, idle: float, ready_w: int) -> int:
    """Fork the pool's daemon from this process, which must have one thread (:func:`single_threaded`);
    the child isolates itself (:func:`_serve_forked`) before it imports anything. Saves the new
    interpreter's start and the imports this process already has. Returns the child's pid (the caller
    reaps it)."""
    if not single_threaded():
        raise errors.FailedPrecondition(f"forking the thin pool daemon for {pool_path}",
                                        "is unsafe in a process with threads", fix="use start_method='auto'")
    env, path, logfd = _daemon_env(), isolated_path(), _open_log(pool_path)
    try:
        for f in (sys.stdout, sys.stderr):   # the caller's buffered output: written once, by the caller
            try:
                f.flush()
            except (AttributeError, OSError, ValueError):
                pass
        pid = os.fork()
        if pid == 0:
            _serve_forked(pool_path, mountpoint, idle, ready_w, logfd, env, path)
        return pid
    finally:
        os.close(logfd)


class _Prestart(NamedTuple):
    mountpoint: str
    lock: int          # the start lock, held until a client takes the daemon over
    ready_r: int       # the daemon's ready pipe
    pid: int


#: pool path -> a daemon this process started ahead of its first client (:func:`prestart`)
_PENDING: dict[str, _Prestart] = {}


def store_paths(store: str) -> tuple[str, str]:
    """The pool directory and the FUSE mount point of the ``thin`` backend's store at ``store``."""
    return os.path.join(store, "pool"), os.path.join(store, "dev")


def prestart(pool_path: str, mountpoint: str, *, idle: float = 2.0) -> bool:
    """Begin starting the daemon of the pool at ``pool_path`` and return at once, so that it comes up
    while this process does other work (the CLI: while it imports what a verb needs, ~50-60 ms, against
    the daemon's ~45 ms); this process's next :meth:`PoolClient.connect` to the pool takes it over, and
    :func:`drop_prestart` stops one nobody took. Returns whether it started one: not when the pool does
    not exist yet, a daemon's socket is there, another process is starting one, or this process has
    threads (it forks the daemon, as :meth:`PoolClient.connect` does).

    >>> prestart("/nonexistent/pool", "/nonexistent/dev")
    False
    """
    pool_path, mountpoint = os.path.abspath(pool_path), os.path.abspath(mountpoint)
    if (pool_path in _PENDING or not os.path.exists(os.path.join(pool_path, "metadata"))
            or not single_threaded()):
        return False
    ctl = wire.open_ctl_dir(pool_path, create=True)
    try:
        if os.path.lexists(os.path.join(f"/proc/self/fd/{ctl}", wire.SOCK)):
            return False                     # a daemon serves (or one died: connect() sees to it)
        lock = os.open(wire.START_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=ctl)
    finally:
        os.close(ctl)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return False                         # another process is starting one
    try:
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = _fork_daemon(pool_path, mountpoint, idle, w)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
    except BaseException:
        os.close(lock)
        raise
    _PENDING[pool_path] = _Prestart(mountpoint, lock, r, pid)
    return True


def drop_prestart(pool_path: str | None = None) -> None:
    """Stop the daemon this process prestarted for ``pool_path`` (every one when None) if no client took it
    over (a command that failed before it opened its store): a daemon never outlives the command that
    started it for nothing.

    >>> drop_prestart("/nonexistent/pool")
    """
    pools = list(_PENDING) if pool_path is None else [os.path.abspath(pool_path)]
    for path in pools:
        pending = _PENDING.get(path)
        if pending is None:
            continue
        c = PoolClient(path, pending.mountpoint)
        try:
            if c.connect(start=False):
                c.stop()
        except (errors.LabkitError, OSError):
            pass                             # it stops by itself when idle
        finally:
            c.close()


class DaemonInfo(NamedTuple):
    """What the daemon says about itself: its pid, whether its FUSE export is up, open device files,
    connected clients, and the pool's block size and size in blocks."""

    pid: int
    ready: bool
    open: int
    clients: int
    block_size: int
    nr_data_blocks: int


def _daemon_info(d: dict[str, Any]) -> DaemonInfo:
    return DaemonInfo(**{k: v for k, v in d.items() if k in DaemonInfo._fields})


class _Gone(Exception):
    """The connection broke; ``sent`` says whether the request may have reached the daemon."""

    def __init__(self, sent: bool) -> None:
        super().__init__("connection to the thin pool daemon broke")
        self.sent = sent


class PoolClient:
    """A connection to the daemon that owns the pool at ``pool_path`` (started when needed), which
    exports its devices under ``mountpoint``. ``idle``: seconds the daemon lingers unused (-1: forever);
    ``start_method``: how a daemon is started when none runs (:data:`START_METHODS`)."""

    def __init__(self, pool_path: str, mountpoint: str, *, idle: float = 2.0, start_timeout: float = 20.0,
                 start_method: str = "auto") -> None:
        if start_method not in START_METHODS:
            raise errors.InvalidArgument(f"thin pool daemon start method {start_method!r}", "is not known",
                                         fix="use one of " + ", ".join(START_METHODS))
        self.pool_path = os.path.abspath(pool_path)
        self.mountpoint = os.path.abspath(mountpoint)
        self.idle = idle
        self.start_timeout = start_timeout
        self.start_method = start_method
        self.tag = _sha1_hex(self.pool_path.encode())[:8]
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._info: DaemonInfo | None = None
        self._lock = threading.RLock()        # one request at a time on the connection
        self._loop_lock = threading.Lock()
        self._held: dict[int, tuple[str, int]] = {}   # dev id -> (loop device, our open fd on it)
        self._children: list[int | subprocess.Popen[bytes]] = []   # daemons this client started, not reaped

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
            pending = _PENDING.pop(self.pool_path, None)
            if pending is not None:
                self._take_over(pending)
            if self._try_connect() or not start:
                return self._sock is not None
            deadline = time.monotonic() + self.start_timeout
            ctl = wire.open_ctl_dir(self.pool_path, create=True)
            try:
                lock = os.open(wire.START_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                               dir_fd=ctl)
            finally:
                os.close(ctl)
            try:  # one starter at a time; the others find the daemon up when they get the lock, or before
                if self._flock(lock, deadline):
                    return True
                while not self._try_connect():   # (a daemon that said ready answers; one more start else)
                    if time.monotonic() > deadline:
                        raise self._did_not_start(f"did not answer within {self.start_timeout:g} s")
                    self._start(deadline)
                return True
            finally:
                os.close(lock)

    def _flock(self, fd: int, deadline: float) -> bool:
        """Take the start lock; True instead when, while another process holds it, the daemon that process
        starts comes up and answers (this client is then connected; the other may hold its lock a while
        longer: a CLI that prestarted the daemon holds it until it opens its store)."""
        polls = 0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return False
            except BlockingIOError:
                polls += 1
                if polls % 5 == 0 and self._try_connect():
                    return True
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

    def _take_over(self, pending: _Prestart) -> None:
        """Wait for the daemon this process prestarted (:func:`prestart`) to say it is ready (or to end),
        then let go of the start lock it held; this client reaps it."""
        self._children.append(pending.pid)
        try:
            if select.select([pending.ready_r], [], [], self.start_timeout)[0]:
                os.read(pending.ready_r, 1)   # ready, or EOF: connect() then starts one and says why not
        finally:
            os.close(pending.ready_r)
            os.close(pending.lock)

    def _start(self, deadline: float) -> None:
        """Start a daemon and wait until it says it is ready: it writes one byte to a pipe once its socket
        listens and its FUSE export is mounted (the pipe's end, at EOF, says it ended before that)."""
        self._children = [c for c in self._children if not _wait_quietly(c, block=False)]  # earlier, gone ones
        r, w = os.pipe2(os.O_CLOEXEC)
        proc: subprocess.Popen[bytes] | None = None
        try:
            try:
                if self.start_method == "fork" or (self.start_method == "auto" and single_threaded()):
                    self._fork(w)
                else:
                    proc = self._spawn(w)
            finally:
                os.close(w)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise self._did_not_start(f"did not say it was ready within {self.start_timeout:g} s")
            said = os.read(r, 1)
        finally:
            os.close(r)
        if not said:
            status = proc.poll() if proc is not None else None
            raise self._did_not_start("ended before it was ready" + (f" (status {status})" if status else ""))

    def _spawn(self, ready_w: int) -> subprocess.Popen[bytes]:
        """Start the daemon in a new interpreter isolated from this process: ``python -I -S`` (no PYTHON*
        variables, no site, no cwd or script directory on sys.path) with :func:`isolated_path` as its
        path, cwd ``/``, a minimal environment, stdin ``/dev/null``, output to ``daemon.log``, its own
        session, and no descriptor of ours but the ready pipe."""
        code = (f"import sys; sys.path[:0] = {isolated_path()!r}; "
                "from labkit.thin.daemon import serve_and_exit; serve_and_exit(sys.argv[2:])")
        argv = [sys.executable, "-I", "-S", "-c", code, "labkit.thin.daemon", self.pool_path, self.mountpoint,
                "--idle", str(self.idle), "--ready-fd", str(ready_w)]
        import subprocess
        logfd = _open_log(self.pool_path)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logfd, stderr=logfd, cwd="/",
                                    env=_daemon_env(), close_fds=True, pass_fds=(ready_w,), start_new_session=True)
        finally:
            os.close(logfd)
        self._children.append(proc)           # reaped as a forked one is (never a zombie)
        return proc

    def _fork(self, ready_w: int) -> None:
        """Fork the daemon from this process (:func:`_fork_daemon`); like a started interpreter, it is
        reaped by :meth:`stop` once it has exited, or by a thread that :meth:`close` starts when it
        outlives this client."""
        self._children.append(_fork_daemon(self.pool_path, self.mountpoint, self.idle, ready_w))

    def _reap(self) -> None:
        """Wait for the daemon this client started last, which is exiting (it closed our connection), and
        collect any earlier one that has exited."""
        if self._children:
            _wait_quietly(self._children.pop())
        self._children = [c for c in self._children if not _wait_quietly(c, block=False)]

    def _reap_later(self) -> None:
        """Leave the daemons this client started and that still run to a thread that waits for their
        exit (never a zombie; started only here, at close: a process with one thread can fork again)."""
        children = [c for c in self._children if not _wait_quietly(c, block=False)]
        self._children = []
        if children:
            threading.Thread(target=lambda: [_wait_quietly(c) for c in children], daemon=True,
                             name="labkit-thin-reaper").start()

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
        if reply.get("stopping") is True:    # it is shutting down and did not do this: as if never sent
            self._drop()
            raise _Gone(sent=False)
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
                        _log().info("thin pool daemon for %s went away during %s: reconnecting", self.pool_path, op)
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
            self._reap_later()

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
            if gone:
                self._reap()
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
        from .records import Status
        return Status(**self._call("status"))

    def usage(self, dev_id: int) -> Usage:
        """Mapped, exclusive and shared blocks of ``dev_id`` (:meth:`Pool.usage`)."""
        from .records import Usage
        return Usage(**self._call("usage", dev_id))

    def usages(self) -> dict[int, Usage]:
        """:meth:`usage` of every device, from one walk (:meth:`Pool.usages`)."""
        from .records import Usage
        return {int(k): Usage(**v) for k, v in self._call("usages").items()}

    def mappings(self, dev_id: int) -> list[tuple[int, int, int]]:
        """``(virtual block, data block, time)`` of every mapping of ``dev_id`` (:meth:`Pool.mappings`)."""
        return [(vb, db, t) for vb, db, t in self._call("mappings", dev_id)]

    def sharing(self, dev_id: int) -> list[tuple[int, int, tuple[int, ...]]]:
        """``(virtual block, data block, other devices mapping it)`` per mapping (:meth:`Pool.sharing`)."""
        return [(vb, db, tuple(others)) for vb, db, others in self._call("sharing", dev_id)]

    def block_map(self, dev_id: int) -> list[BlockInfo]:
        """One :class:`BlockInfo` per virtual block of ``dev_id`` (:meth:`Pool.block_map`)."""
        from .records import BlockInfo
        return [BlockInfo(state, db) for state, db in self._call("block_map", dev_id)]

    def details(self, dev_id: int) -> DeviceDetails:
        """What the pool records about ``dev_id`` (:meth:`Pool.details`)."""
        from .records import DeviceDetails
        return DeviceDetails(**self._call("details", dev_id))

    def check(self) -> CheckReport:
        """The daemon's check of its pool (:meth:`Pool.check`)."""
        from .check import CheckReport
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

    def detach(self, dev_id: int, *, flush: bool = True) -> None:
        """Flush and detach ``dev_id``'s loop device, whoever attached it, and wait until it is gone (up to
        5 s; a device still mounted or open elsewhere goes when its last user lets go). A no-op when none
        is attached. For a device that must go now: before commit, delete or remove.

        ``flush=False`` is for a device about to be deleted: no flush (each one commits the pool: three
        fsyncs) and no wait, since the daemon's ``delete`` waits until the loop device has released the
        file, which the kernel does only after writing back what it cached of it."""
        with self._loop_lock:
            held = self._held.pop(dev_id, None)
        if held is not None:
            try:
                if flush:
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
                if flush:
                    os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)
            loop.detach(dev)
        except OSError as e:
            if e.errno not in (errno.ENXIO, errno.ENOENT):
                raise
        if not flush:
            return
        # the loop driver drops its file reference asynchronously; wait until it has
        deadline = time.monotonic() + 5
        while self.loop_of(dev_id) and time.monotonic() < deadline:
            time.sleep(0.005)


def _wait_quietly(child: int | subprocess.Popen[bytes], *, block: bool = True) -> bool:
    """Reap a daemon this process started (a pid it forked, or the Popen of an interpreter); returns
    whether it has exited (with ``block``, after waiting for it)."""
    if not isinstance(child, int):                       # the Popen of an interpreter
        return (child.wait() if block else child.poll()) is not None
    try:
        return os.waitpid(child, 0 if block else os.WNOHANG)[0] == child
    except ChildProcessError:
        return True


def _serve_forked(pool_path: str, mountpoint: str, idle: float, ready_w: int, logfd: int, env: dict[str, str],
                  path: list[str]) -> NoReturn:
    """The forked daemon: isolate this process from its caller as ``python -I`` would be, then serve; it
    never returns into the caller's code (it ends with ``os._exit``). Nothing inherited is ever freed here:
    cyclic garbage collection is frozen first and replaced objects are kept (:data:`_INHERITED`), so no
    finalizer of the caller's objects runs (closing a descriptor number the daemon's own files took)."""
    import gc
    gc.freeze()
    code = 1
    try:
        import signal
        # above the standard descriptors (a caller with stdin closed may have got 0 for one of them)
        ready_w = fcntl.fcntl(ready_w, fcntl.F_DUPFD_CLOEXEC, 3)
        logfd = fcntl.fcntl(logfd, fcntl.F_DUPFD_CLOEXEC, 3)
        os.setsid()
        os.chdir("/")
        os.umask(0o077)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        os.closerange(3, ready_w)            # every other inherited descriptor (the store's locks among them)
        os.closerange(ready_w + 1, max(os.sysconf("SC_OPEN_MAX"), ready_w + 2))
        fh = sys.modules.get("faulthandler")
        if fh is not None:
            fh.disable()                     # it would write a crash into whatever took its descriptor's number
        _INHERITED.extend([sys.stdin, sys.stdout, sys.stderr])
        sys.stdin = open(0, closefd=False)   # (for the life of the process)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        lg = sys.modules.get("logging")
        if lg is not None:                   # the caller's handlers write to descriptors closed above
            _INHERITED.append(list(lg.root.handlers))
            lg.root.handlers.clear()
        os.environ.clear()
        os.environ.update(env)
        sys.path[:] = path
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        from . import daemon  # imported after the isolation: from the daemon's path only
        code = daemon.serve(pool_path, mountpoint, idle=idle, ready_fd=ready_w)
    except BaseException:  # noqa: BLE001 - a daemon that fails says why in its log, never in its caller's code
        try:
            import traceback
            traceback.print_exc()
        except BaseException:  # noqa: BLE001 - nothing more can be said
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
