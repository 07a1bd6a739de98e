"""The spawner: a small helper process that forks containers, so a big Python process never forks per run.

Forking copies the page tables of the caller; from a 125 MB notebook kernel that triples a container's
start time (HOST-NOTES). A :class:`Runtime` therefore starts this module once
(``python -m labkit.containers._spawner FD``) and sends it requests over a ``SOCK_SEQPACKET`` socket:
one JSON message per request (``{"op": "run", "spec": RunSpec.to_json(), "fds": ["netns", "tty"]}``), the
network-namespace fd and the pty slave alongside when there are some (``SCM_RIGHTS``, in ``fds`` order).

For ``run`` the spawner forks a **shim**, which starts a new session, unshares the PID namespace and
forks the container's PID 1 (:func:`labkit.containers._setup.setup_and_exec`). The shim stays outside
the container, waits for PID 1 and writes its wait status to ``<state>/exit``; containers and shims do
not depend on the spawner or the caller, so a detached container outlives both. ``exec`` works the same
way with :func:`~labkit.containers._setup.join_and_exec`. The spawner answers once the exec happened
(or failed: the error line of the step that failed).

``Spawner(direct=True)`` forks the shims from the calling process itself, with the same code: for a small
one-shot process such as the ``labkit`` command, which would otherwise pay for starting a second Python
(~40 ms calm, 100 ms and more under load) to save a fork that costs it a millisecond or two. The shim then
closes every descriptor it did not get on purpose (the caller's store, sockets, locks), reads stdin from
``/dev/null`` and ignores SIGINT, as a shim of the helper does; its child runs no code that could wait for
a lock another thread of the caller held at the fork (no imports, no logging, no ``sys.std*``). The caller
reaps its shims on the next request and on :meth:`Spawner.close`.

>>> from labkit.containers._spawner import Spawner
>>> with Spawner() as sp:                                   # doctest: +SKIP
...     sp.request({"op": "ping"})
{'ok': True}
"""
from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

from . import _ns, _setup  # imported once here, not after each fork
from ._proc import wait_pid
from .spec import ExecSpec, RunSpec

if TYPE_CHECKING:
    import socket  # the helper's channel: imported where it is used, so that a direct fork never loads it
    import subprocess  # the helper's start, likewise (~3 ms with selectors)

MAX_MSG = 1 << 20


def _join_cgroup(procs_files: list[str], pid: int) -> None:
    """Move ``pid`` into the container's cgroup (one write per hierarchy)."""
    for f in procs_files:
        with open(f, "w") as fh:
            fh.write(str(pid))


def _shim_run(spec: RunSpec, errw: int, pidw: int, netns_fd: int | None, tty_fd: int | None) -> None:
    try:
        os.setsid()
        _ns.unshare(_ns.CLONE_NEWPID)
        joinr, joinw = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            os.close(pidw)
            os.close(joinw)
            _setup.setup_and_exec(spec, errw, netns_fd, tty_fd, joined=joinr)
        os.close(joinr)
        for fd in (netns_fd, tty_fd):
            if fd is not None:
                os.close(fd)
        # PID 1 sets itself up meanwhile and waits for this before it becomes the command: the first move
        # into a cgroup after a quiet spell waits for an RCU grace period (~7 ms here), which now overlaps
        # with PID 1's mounts instead of coming before them
        try:
            _join_cgroup(spec.procs_files, child)
        except OSError as e:
            os.write(errw, f"cgroup: {e.strerror or e}".encode())
            os.kill(child, 9)
        else:
            os.write(joinw, b"1")
        os.close(joinw)
        os.close(errw)
        os.write(pidw, str(child).encode())
        os.close(pidw)
        _, status = os.waitpid(child, 0)
        tmp = spec.exit + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(status))
        os.rename(tmp, spec.exit)
        os._exit(0)
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(errw, f"shim: {e}".encode())
        finally:
            os._exit(1)


def _own_descriptors_only(keep: set[int]) -> None:
    """In a shim forked by the caller itself: stdin, stdout and stderr on /dev/null (a detached container
    must not hold the caller's pipes: ``$(labkit run -d ...)`` would wait for it to exit), every other
    descriptor above 2 that is not in ``keep`` closed, SIGINT ignored (as in a shim of the helper process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    null = os.open("/dev/null", os.O_RDWR)
    for i in (0, 1, 2):
        os.dup2(null, i)
    os.close(null)
    lo = 3
    for fd in sorted(k for k in keep if k >= 3):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 20)


def _fork_shim(req: dict[str, Any], fds: list[int], *, sock: socket.socket | None = None,
               direct: bool = False) -> dict[str, Any]:
    """Fork the shim for a ``run`` or ``exec`` request and wait until its command has exec'd (or failed).

    ``fds`` are the passed descriptors (``req["fds"]`` names them); the helper owns its copies and closes
    them, a ``direct`` caller keeps and closes its own."""
    op = req.get("op")
    if op not in ("run", "exec"):
        if not direct:
            for fd in fds:
                os.close(fd)
        return {"ok": False, "error": f"unknown op {op!r}"}
    named = dict(zip(req.get("fds", []), fds))       # which passed fd is which: "netns", "tty"
    spec = RunSpec.from_json(req["spec"]) if op == "run" else ExecSpec.from_json(req["spec"])
    errr, errw = os.pipe2(os.O_CLOEXEC)
    pidr, pidw = os.pipe2(os.O_CLOEXEC)
    shim = os.fork()
    if shim == 0:
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            if sock is not None:
                sock.close()
            os.close(errr)
            os.close(pidr)
            if direct:
                gc.disable()    # no finalizer of the caller's objects may run here (their fds are closed)
                _own_descriptors_only({errw, pidw, *fds})
            if isinstance(spec, RunSpec):
                _shim_run(spec, errw, pidw, named.get("netns"), named.get("tty"))
            else:
                os.close(pidw)
                os.setsid()
                _setup.join_and_exec(spec, errw, named.get("tty"))
        finally:
            os._exit(1)
    os.close(errw)
    os.close(pidw)
    if not direct:
        for fd in fds:
            os.close(fd)
    err = b""
    while chunk := os.read(errr, 4096):
        err += chunk
    pid = b""
    while chunk := os.read(pidr, 64):
        pid += chunk
    os.close(errr)
    os.close(pidr)
    if err:
        return {"ok": False, "error": err.decode(errors="replace"), "shim": shim}
    return {"ok": True, "shim": shim, "pid": int(pid) if pid else None}


def _handle(sock: socket.socket, req: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    if req.get("op") == "ping":
        return {"ok": True, "pid": os.getpid()}
    return _fork_shim(req, fds, sock=sock)


def serve(fd: int) -> None:
    """Answer requests on the socket ``fd`` until the other end closes it."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # shims are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # a ^C in the notebook must not kill the spawner
    import socket
    sock = socket.socket(fileno=fd)
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG, 4)
        except ConnectionResetError:
            return
        if not data:
            return
        try:
            reply = _handle(sock, json.loads(data), fds)
        except Exception as e:  # noqa: BLE001 - one bad request must not end the spawner
            reply = {"ok": False, "error": f"spawner: {e}"}
        sock.send(json.dumps(reply).encode())


class Spawner:
    """Client side: starts the helper on first use (or when :meth:`start` says so) and sends it requests
    (thread-safe). ``direct=True``: no helper, this process forks the shims (see the module's doc).

    >>> sp = Spawner()                          # doctest: +SKIP
    >>> sp.request({"op": "ping"})["ok"]        # doctest: +SKIP
    True
    """

    def __init__(self, *, direct: bool = False) -> None:
        self.direct = direct
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._shims: set[int] = set()       # direct: shims this process forked and has not reaped yet

    @property
    def pid(self) -> int | None:
        """The process that forks the shims: the helper's pid, or this process's when ``direct``."""
        if self.direct:
            return os.getpid()
        return self._proc.pid if self._proc else None

    def _start(self) -> None:
        import socket
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": pkg_root}
        # the helper treats bytecode as this process does: cached where this process caches it, never
        # written where this process writes none
        if sys.dont_write_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        if sys.pycache_prefix:
            env["PYTHONPYCACHEPREFIX"] = sys.pycache_prefix
        import subprocess
        self._proc = subprocess.Popen([sys.executable, "-S", "-m", "labkit.containers._spawner",
                                       str(theirs.fileno())], pass_fds=[theirs.fileno()], env=env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, cwd="/")   # never the caller's pipes
        theirs.close()
        self._sock = mine
        # a Runtime dropped without close(): closing our end lets the spawner see EOF and exit
        weakref.finalize(self, mine.close)

    def start(self) -> None:
        """Start the helper now, without waiting for it: its start-up then overlaps with the caller's
        work until the first request (a no-op when it runs, or when ``direct``)."""
        if self.direct:
            return
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self.close_locked()
                self._start()

    def _reap(self) -> None:
        for pid in list(self._shims):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._shims.discard(pid)

    def request(self, req: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        """Send one request (and fds) and return the reply; a spawner found dead is restarted first.

        A spawner that dies after taking a request is not asked again (the request may have started a
        container); that raises ``OSError``. With ``direct`` the shim is forked here; the caller keeps
        (and closes) ``fds``.
        """
        if self.direct:
            with self._lock:
                self._reap()
                if req.get("op") == "ping":
                    return {"ok": True, "pid": os.getpid()}
                reply = _fork_shim(req, list(fds or []), direct=True)
                if reply.get("shim"):
                    self._shims.add(reply["shim"])
                return reply
        with self._lock:
            for _attempt in (0, 1):
                if self._proc is None or self._proc.poll() is not None:
                    self.close_locked()
                    self._start()
                assert self._sock
                import socket
                try:
                    socket.send_fds(self._sock, [json.dumps(req).encode()], fds or [])
                except (BrokenPipeError, ConnectionResetError):
                    self.close_locked()         # died before it read anything: safe to send again
                    continue
                try:
                    data = self._sock.recv(MAX_MSG)
                except ConnectionResetError:
                    data = b""
                if not data:
                    self.close_locked()
                    raise OSError("labkit spawner died while handling a request")
                return json.loads(data)
        raise OSError("labkit spawner cannot be started")

    def close_locked(self) -> None:
        if self.direct:
            self._reap()
            return
        if self._sock:
            self._sock.close()
            self._sock = None
        if self._proc:
            # it exits at once on EOF: wait on a pidfd (Popen.wait(timeout) polls with sleeps, ~30 ms here)
            if not wait_pid(self._proc.pid, 2.0):
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        """Stop the helper (containers keep running: they do not depend on it)."""
        with self._lock:
            self.close_locked()

    def __enter__(self) -> Spawner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
    os._exit(0)     # nothing left to flush: skip the interpreter's teardown, the caller waits for the exit
