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

>>> from labkit.containers._spawner import Spawner
>>> with Spawner() as sp:                                   # doctest: +SKIP
...     sp.request({"op": "ping"})
{'ok': True}
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import weakref
from typing import Any

from . import _ns, _setup   # imported once here, not after each fork
from .spec import ExecSpec, RunSpec

MAX_MSG = 1 << 20


def _shim_run(spec: RunSpec, errw: int, pidw: int, netns_fd: int | None, tty_fd: int | None) -> None:
    try:
        os.setsid()
        _ns.unshare(_ns.CLONE_NEWPID)
        child = os.fork()
        if child == 0:
            os.close(pidw)
            _setup.setup_and_exec(spec, errw, netns_fd, tty_fd)
        os.close(errw)
        for fd in (netns_fd, tty_fd):
            if fd is not None:
                os.close(fd)
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


def _handle(sock: socket.socket, req: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    op = req.get("op")
    if op == "ping":
        return {"ok": True, "pid": os.getpid()}
    if op not in ("run", "exec"):
        for fd in fds:
            os.close(fd)
        return {"ok": False, "error": f"unknown op {op!r}"}
    named = dict(zip(req.get("fds", []), fds))       # which passed fd is which: "netns", "tty"
    spec = RunSpec.from_json(req["spec"]) if op == "run" else ExecSpec.from_json(req["spec"])
    errr, errw = os.pipe2(os.O_CLOEXEC)
    pidr, pidw = os.pipe2(os.O_CLOEXEC)
    shim = os.fork()
    if shim == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        os.close(errr)
        os.close(pidr)
        if isinstance(spec, RunSpec):
            _shim_run(spec, errw, pidw, named.get("netns"), named.get("tty"))
        else:
            os.close(pidw)
            os.setsid()
            _setup.join_and_exec(spec, errw, named.get("tty"))
        os._exit(1)
    os.close(errw)
    os.close(pidw)
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


def serve(fd: int) -> None:
    """Answer requests on the socket ``fd`` until the other end closes it."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # shims are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # a ^C in the notebook must not kill the spawner
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
    """Client side: starts the helper on first use and sends it requests (thread-safe).

    >>> sp = Spawner()                          # doctest: +SKIP
    >>> sp.request({"op": "ping"})["ok"]        # doctest: +SKIP
    True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": pkg_root,
               "PYTHONDONTWRITEBYTECODE": "1"}
        self._proc = subprocess.Popen([sys.executable, "-S", "-m", "labkit.containers._spawner",
                                       str(theirs.fileno())], pass_fds=[theirs.fileno()], env=env,
                                      stdin=subprocess.DEVNULL, cwd="/")
        theirs.close()
        self._sock = mine
        # a Runtime dropped without close(): closing our end lets the spawner see EOF and exit
        weakref.finalize(self, mine.close)

    def request(self, req: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        """Send one request (and fds) and return the reply; a spawner found dead is restarted first.

        A spawner that dies after taking a request is not asked again (the request may have started a
        container); that raises ``OSError``.
        """
        with self._lock:
            for attempt in (0, 1):
                if self._proc is None or self._proc.poll() is not None:
                    self.close_locked()
                    self._start()
                assert self._sock
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
        if self._sock:
            self._sock.close()
            self._sock = None
        if self._proc:
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
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
