"""The pool daemon: one process per pool that owns it, exports its devices over FUSE and takes requests.

:class:`labkit.thin.client.PoolClient` starts it on demand, isolated from the caller (forked from a
caller with one thread, else ``python -I -S``; either way cwd ``/``, a minimal environment, stdin
``/dev/null``, its own session, only labkit's and the interpreter's directories on ``sys.path``). It

* opens the pool, waiting up to ``--lock-wait`` seconds for a previous daemon that is still shutting
  down (a pool has one writer, as dm-thin has one kernel: the pool's ``flock`` decides who owns it);
* serves the JSON-lines protocol of :mod:`labkit.thin.wire` on ``<pool>/ctl/sock`` to root only (mode
  0700 directory plus ``SO_PEERCRED``), at most :data:`~labkit.thin.wire.MAX_CLIENTS` connections at once,
  requests of at most :data:`~labkit.thin.wire.MAX_LINE` bytes. Operations: ``ping``, ``devices``,
  ``create_thin``, ``create_snap``, ``delete``, ``commit``, ``status``, ``usage``, ``usages``,
  ``mappings``, ``sharing``, ``block_map``, ``details``, ``check``, ``stop``;
* mounts :class:`labkit.thin.exportfs.PoolFS` at MOUNTPOINT and runs the FUSE loop in the main thread;
  once the kernel has initialised the mount it writes one byte to ``--ready-fd`` (its starter waits for
  that byte instead of polling the socket);
* stops by itself once no device file is open (no loop device attached) and no client is connected for
  ``--idle`` seconds (``-1``: never), at once when idle after a ``stop`` request, or on SIGTERM. Stopping
  first removes the socket (new clients start a new daemon, which waits for the pool), then unmounts,
  commits and closes the pool.

Its process name is ``labkit-thin``; a started interpreter's command line names the pool after the word
``labkit.thin.daemon``, and a forked one holds the pool's ``metadata`` file open, so ``labkit gc`` finds
either (:mod:`labkit.thin.gc`).

>>> # python -I -S -c '...' labkit.thin.daemon /var/lib/labkit/snapshots/thin/pool /var/lib/labkit/snapshots/thin/dev
"""
from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

from .. import errors
from .._sys import loop, record
from .._sys import mounts as sysmount
from . import wire
from .exportfs import PoolFS, PoolFUSE, mount_options
from .pool import Pool

log = logging.getLogger("labkit.thin.daemon")

#: seconds a ``stop`` request waits for device files that are closing (loop devices being torn down), and
#: a ``delete`` for its device's file (a loop device just detached releases it a moment later)
STOP_GRACE = 1.0
#: requests that change the pool; they commit before they answer, so they are durable when they return
_CHANGING = ("create_thin", "create_snap", "delete")
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class Daemon:
    """The pool's owner: a control server thread beside the FUSE loop."""

    def __init__(self, pool_path: str, mountpoint: str, *, idle: float = 2.0, lock_wait: float = 30.0,
                 ready_fd: int | None = None) -> None:
        self._ready_fd = ready_fd
        self.pool_path = os.path.abspath(pool_path)
        self.mountpoint = os.path.abspath(mountpoint)
        self.idle = idle
        self.pool = Pool.open(self.pool_path, lock_wait=lock_wait)
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.stop_when_idle = False
        self.clients = 0
        self._clients_lock = threading.Lock()
        #: requests being handled: the pool is closed only once none is (a request that comes after the
        #: daemon began to stop is not done: it is answered ``{"stopping": true}`` and sent again elsewhere)
        self._inflight = 0
        self._inflight_cv = threading.Condition()
        self.fs = PoolFS(self.pool, on_ready=self._on_ready)
        self._ctl_fd = -1
        self._sock_ino: int | None = None
        self._parked: list[Any] = []  # connections of clients waiting for this process to end
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def _on_ready(self) -> None:
        """The FUSE export is up (the socket listened before the mount): say so to the starter, once."""
        self.ready.set()
        fd, self._ready_fd = self._ready_fd, None
        if fd is not None:
            try:
                os.write(fd, b"R")
            except OSError:
                pass                      # the starter gave up waiting: clients will find us anyway
            finally:
                os.close(fd)

    # -- control server -----------------------------------------------------------------------
    def _busy(self) -> bool:
        return self.fs.open_count() > 0 or self.clients > 0 or not self.ready.is_set()

    def _serve(self, server: socket.socket) -> None:
        server.setblocking(False)
        last_busy = time.monotonic()
        watched: list[socket.socket | int] = [server, self._wake_r]
        try:
            while not self.stopping.is_set():
                readable, _, _ = select.select(watched, [], [], 0.2)
                if self._wake_r in readable:
                    break
                try:
                    conn, _ = server.accept()
                    conn.setblocking(True)
                except (BlockingIOError, InterruptedError):
                    if self._busy():
                        last_busy = time.monotonic()
                    elif self.stop_when_idle or (self.idle >= 0 and time.monotonic() - last_busy > self.idle):
                        log.info("idle: stopping")
                        self.stop()
                    continue
                except OSError:
                    break
                last_busy = time.monotonic()
                self._admit(conn)
        finally:
            server.close()  # connections still in the backlog are reset: their clients retry

    def _admit(self, conn: socket.socket) -> None:
        try:
            pid, uid, _gid = wire.peer_cred(conn)
        except OSError:
            conn.close()
            return
        if not wire.allowed_uid(uid):
            log.warning("refused a connection from pid %d uid %d", pid, uid)
            conn.close()  # no answer at all
            return
        with self._clients_lock:
            full = self.clients >= wire.MAX_CLIENTS
            if not full:
                self.clients += 1  # counted before the thread runs: the idle check must see it
                self.stop_when_idle = False
        if full:
            err = errors.FailedPrecondition(f"thin pool daemon for {self.pool_path}",
                                            f"serves {wire.MAX_CLIENTS} clients already",
                                            fix="close other snapshotters of this store (notebooks, CLIs) and retry")
            try:
                conn.settimeout(1.0)
                conn.sendall(wire.encode({"error": wire.encode_error(err)}))
            except OSError:
                pass
            conn.close()
            return
        threading.Thread(target=self._client, args=(conn,), daemon=True, name=f"client-{pid}").start()

    def _client(self, conn: socket.socket) -> None:
        keep_open = False
        try:
            f = conn.makefile("rwb")
            while True:
                line = wire.read_line(f)
                if line == b"":
                    break
                if line is None:
                    err = errors.InvalidArgument("thin pool daemon request", f"is longer than {wire.MAX_LINE} bytes",
                                                 fix="send smaller requests")
                    log.warning("dropped a client: request longer than %d bytes", wire.MAX_LINE)
                    f.write(wire.encode({"error": wire.encode_error(err)}))
                    f.flush()
                    break
                with self._inflight_cv:
                    if self.stopping.is_set():
                        f.write(wire.encode({"stopping": True}))
                        f.flush()
                        break
                    self._inflight += 1
                try:
                    reply = self._handle(line)
                finally:
                    with self._inflight_cv:
                        self._inflight -= 1
                        self._inflight_cv.notify_all()
                stop = reply.pop("_stop", False)
                f.write(wire.encode(reply))
                f.flush()
                if stop:
                    # answer first, stop, and leave this connection open: the client sees it close when
                    # this process exits, after the unmount and the last commit
                    keep_open = True
                    self._parked.append((conn, f))
                    self.stop()
                    return
        except (OSError, ValueError):
            pass
        finally:
            with self._clients_lock:
                self.clients -= 1
            if not keep_open:
                conn.close()

    def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            try:
                req = json.loads(line)
            except ValueError:
                raise errors.InvalidArgument("thin pool daemon request", "is not JSON") from None
            if (not isinstance(req, dict) or not isinstance(req.get("op"), str)
                    or not isinstance(req.get("args", []), list)):
                raise errors.InvalidArgument("thin pool daemon request", "needs a string op and a list of args")
            op, args = req["op"], req.get("args", [])
            try:
                return self._dispatch(op, args)
            except TypeError as e:
                raise errors.InvalidArgument(f"daemon request {op!r}", f"has wrong arguments ({e})") from None
        except Exception as e:  # a bug or a bad request must not kill the daemon that holds the pool
            if not isinstance(e, (errors.LabkitError, OSError)):
                log.exception("request failed")
            return {"error": wire.encode_error(e)}

    def _dispatch(self, op: str, args: list[Any]) -> dict[str, Any]:
        pool = self.pool
        if op == "ping":
            return {"ok": {"ready": self.ready.is_set(), "pid": os.getpid(), "open": self.fs.open_count(),
                           "clients": self.clients, "block_size": pool.block_size,
                           "nr_data_blocks": pool.nr_data_blocks}}
        if op == "stop":
            return self._stop_request()
        if op in _CHANGING:
            if op == "delete" and args:
                # a loop device just detached releases the file a moment later, after the kernel has written
                # its cached pages back: delete after that (the client then need not flush nor wait)
                self.fs.wait_closed(args[0], STOP_GRACE)
            getattr(pool, op)(*args)
            pool.commit()
            self.fs.forget(args[0])     # a new or deleted device: the kernel's pages and size of its file are stale
            return {"ok": None}
        if op == "commit":
            return {"ok": pool.commit()}
        if op == "devices":
            return {"ok": pool.devices()}
        if op == "status":
            return {"ok": record.asdict(pool.status())}
        if op == "usage":
            return {"ok": record.asdict(pool.usage(*args))}
        if op == "usages":
            return {"ok": {str(k): record.asdict(u) for k, u in pool.usages().items()}}
        if op == "mappings":
            return {"ok": pool.mappings(*args)}
        if op == "sharing":
            return {"ok": pool.sharing(*args)}
        if op == "block_map":
            return {"ok": [[b.state, b.data_block] for b in pool.block_map(*args)]}
        if op == "details":
            return {"ok": record.asdict(pool.details(*args))}
        if op == "check":
            return {"ok": record.asdict(pool.check())}
        raise errors.InvalidArgument(f"daemon request {op!r}", "is unknown")

    def _loops_mounted(self) -> bool:
        """Whether a loop device over one of our device files is mounted (a container runs on it)."""
        prefix = self.mountpoint + "/"
        ours = {lp.dev for lp in loop.list_loops() if lp.backing_file.startswith(prefix)}
        return bool(ours) and any(m.source in ours for m in sysmount.mountinfo())

    def _stop_request(self) -> dict[str, Any]:
        """``stop``: stop now if nothing else uses the daemon, else as soon as it is idle. Never refused."""
        deadline = time.monotonic() + STOP_GRACE
        while self.fs.open_count() and self.clients <= 1 and not self._loops_mounted():
            left = deadline - time.monotonic()   # a just-released loop device lets go of its file a moment later
            if left <= 0 or self.fs.wait_closed(None, min(left, 0.05)):
                break
        others, open_now = self.clients - 1, self.fs.open_count()
        if others <= 0 and open_now == 0:
            log.info("stop requested: stopping")
            return {"ok": {"stopping": True, "open": 0, "clients": 0}, "_stop": True}
        self.stop_when_idle = True
        log.info("stop requested: %d open devices, %d other clients; stopping when idle", open_now, others)
        return {"ok": {"stopping": False, "open": open_now, "clients": others}}

    # -- lifecycle ----------------------------------------------------------------------------
    def _unlink_socket(self) -> None:
        if self._ctl_fd < 0 or self._sock_ino is None:
            return
        try:
            if os.stat(wire.SOCK, dir_fd=self._ctl_fd, follow_symlinks=False).st_ino == self._sock_ino:
                os.unlink(wire.SOCK, dir_fd=self._ctl_fd)
        except OSError:
            pass
        self._sock_ino = None

    def stop(self) -> None:
        """Remove the socket, then unmount the FUSE filesystem; the FUSE loop then returns and :meth:`run`
        closes the pool."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._unlink_socket()
        os.write(self._wake_w, b"x")  # the control thread closes the listener at once
        try:
            sysmount.umount(self.mountpoint)
        except OSError as e:
            if e.errno == errno.EBUSY:  # a device is still open (stop by signal): serve it until it closes
                sysmount.umount(self.mountpoint, sysmount.MNT_DETACH)
            elif e.errno != errno.EINVAL:
                log.warning("unmount %s: %s", self.mountpoint, e)

    def _wait_signals(self) -> None:
        sig = signal.sigwait(_STOP_SIGNALS)
        log.info("signal %d: stopping", sig)
        self.stop()

    def _clear_stale_mount(self) -> None:
        """A FUSE mount of this pool left by a killed daemon ("transport endpoint is not connected")."""
        fsname = mount_options(self.pool_path)["fsname"]
        for m in sysmount.mountinfo():
            if m.target == self.mountpoint and m.source == fsname:
                log.info("detaching a stale mount of this pool at %s", self.mountpoint)
                sysmount.umount(self.mountpoint, sysmount.MNT_DETACH)

    def run(self) -> int:
        """Serve until stopped; returns the exit code."""
        _set_name(b"labkit-thin")
        # the main thread sits in libfuse's loop, where a Python signal handler never runs: every thread
        # (libfuse's too) inherits a blocked mask, and one thread takes the signals with sigwait
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        threading.Thread(target=self._wait_signals, daemon=True, name="signals").start()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        t: threading.Thread | None = None
        try:
            self._ctl_fd = wire.open_ctl_dir(self.pool_path, create=True)
            try:  # we own the pool (its flock): a socket left here is a dead daemon's
                os.unlink(wire.SOCK, dir_fd=self._ctl_fd)
            except FileNotFoundError:
                pass
            server.bind(wire.sock_address(self._ctl_fd))
            self._sock_ino = os.stat(wire.SOCK, dir_fd=self._ctl_fd, follow_symlinks=False).st_ino
            server.listen(64)
            t = threading.Thread(target=self._serve, args=(server,), daemon=True, name="control")
            t.start()
            self._clear_stale_mount()
            os.makedirs(self.mountpoint, exist_ok=True)
            PoolFUSE(self.fs, self.mountpoint, **mount_options(self.pool_path))
        finally:
            self.stopping.set()
            self._unlink_socket()
            if t is not None:
                t.join(timeout=2)
            server.close()
            with self._inflight_cv:       # a request admitted before the stop finishes on an open pool
                self._inflight_cv.wait_for(lambda: self._inflight == 0, timeout=30)
            self.pool.close()
            if self._ctl_fd >= 0:
                os.close(self._ctl_fd)
        return 0


def _set_name(name: bytes) -> None:
    try:
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``labkit.thin.daemon POOL MOUNTPOINT [--idle SECONDS] [--lock-wait SECONDS] [--ready-fd N]``."""
    import argparse  # (a forked daemon calls serve() and does without)
    p = argparse.ArgumentParser(prog="labkit.thin.daemon")
    p.add_argument("pool")
    p.add_argument("mountpoint")
    p.add_argument("--idle", type=float, default=2.0, help="stop after this long unused (-1: never)")
    p.add_argument("--lock-wait", type=float, default=30.0, help="wait this long for a previous daemon to let go")
    p.add_argument("--ready-fd", type=int, help="write one byte to this descriptor once serving, then close it")
    args = p.parse_args(argv)
    return serve(args.pool, args.mountpoint, idle=args.idle, lock_wait=args.lock_wait, ready_fd=args.ready_fd)


def serve(pool_path: str, mountpoint: str, *, idle: float = 2.0, lock_wait: float = 30.0,
          ready_fd: int | None = None) -> int:
    """Run a :class:`Daemon` with its log set up (what :func:`main` and a forked start call); returns the
    exit code."""
    if ready_fd is not None:
        os.set_inheritable(ready_fd, False)
    _set_name(b"labkit-thin")      # (gc knows a forked daemon by it, with the pool's metadata file it holds)
    os.umask(0o077)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s labkit-thin[%(process)d] %(levelname)s %(message)s")
    try:
        return Daemon(pool_path, mountpoint, idle=idle, lock_wait=lock_wait, ready_fd=ready_fd).run()
    except errors.LabkitError as e:
        print(f"labkit-thin: {e}", file=sys.stderr)
        return 1


def serve_and_exit(argv: list[str]) -> None:
    """What the client runs: :func:`main`, then exit at once (everything is closed and flushed by then;
    skipping the interpreter's teardown makes a stop that a client waits for ~100 ms shorter)."""
    code = main(argv)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
