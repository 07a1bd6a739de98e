"""The pool daemon: one process per pool that owns it, exports its devices over FUSE and takes requests.

Run as ``python -m labkit.thin.daemon POOL MOUNTPOINT`` (the client starts it on demand, detached, in its
own session). It

* opens the pool (nobody else may while it runs: a pool has one writer, as dm-thin has one kernel);
* serves a small JSON-lines protocol on an abstract unix socket named after the pool — ``ping``, ``create_thin``,
  ``create_snap``, ``delete``, ``devices``, ``usage``, ``status``, ``commit``, ``mappings``, ``block_map``,
  ``check``, ``size``,
  ``stop`` — answering ``{"ok": result}`` or ``{"error": {"type": ..., "message": ...}}``;
* mounts :class:`labkit.thin.exportfs.PoolFS` at MOUNTPOINT and runs the FUSE loop in the main thread;
* stops by itself once no device file is open (no loop device attached) and no client is connected for
  ``--idle`` seconds, or on ``stop``/SIGTERM: it unmounts, commits and closes the pool.

Its process name is ``labkit-thin`` and its command line names the pool, so ``labkit gc`` can find it.

>>> # python -m labkit.thin.daemon /var/lib/labkit/snapshots/thin/pool /var/lib/labkit/snapshots/thin/dev
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import mfusepy

from .. import errors
from .._sys import mounts as sysmount
from .exportfs import PoolFS, mount_options
from .pool import Pool

log = logging.getLogger("labkit.thin.daemon")


def socket_address(pool_path: str) -> str:
    """The daemon's abstract unix socket (Linux): no file, no 108-byte path limit, gone when it dies."""
    import hashlib
    return "\0labkit-thin-" + hashlib.sha1(os.path.abspath(pool_path).encode()).hexdigest()[:20]


class Daemon:
    """The pool's owner: a control server thread beside the FUSE loop."""

    def __init__(self, pool_path: str, mountpoint: str, *, idle: float = 2.0) -> None:
        self.pool_path = os.path.abspath(pool_path)
        self.mountpoint = os.path.abspath(mountpoint)
        self.idle = idle
        self.pool = Pool.open(self.pool_path)
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.clients = 0
        self._clients_lock = threading.Lock()
        self.fs = PoolFS(self.pool, on_ready=self.ready.set)
        self.sock_path = socket_address(self.pool_path)

    # -- control server -----------------------------------------------------------------------
    def _serve(self, server: socket.socket) -> None:
        server.settimeout(0.2)
        last_busy = time.monotonic()
        while not self.stopping.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                busy = self.fs.open_count() > 0 or self.clients > 0 or not self.ready.is_set()
                if busy:
                    last_busy = time.monotonic()
                elif self.idle >= 0 and time.monotonic() - last_busy > self.idle:
                    log.info("idle for %.1fs: stopping", self.idle)
                    self.stop()
                continue
            last_busy = time.monotonic()
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with self._clients_lock:
            self.clients += 1
        try:
            with conn, conn.makefile("rwb") as f:
                for line in f:
                    reply = self._handle(json.loads(line))
                    stop = reply.pop("stop", False)
                    f.write(json.dumps(reply).encode() + b"\n")
                    f.flush()
                    if stop:  # answer first: stopping ends the process soon after the FUSE loop returns
                        self.stop()
                        break
        except (OSError, ValueError):
            pass
        finally:
            with self._clients_lock:
                self.clients -= 1

    def _handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op, args = req.get("op"), req.get("args", [])
        try:
            if op == "ping":
                return {"ok": {"ready": self.ready.is_set(), "pid": os.getpid(), "open": self.fs.open_count()}}
            if op == "stop":
                if self.fs.open_count() and not req.get("force"):
                    raise errors.FailedPrecondition(
                        f"thin pool daemon for {self.pool_path}", f"has {self.fs.open_count()} open devices",
                        fix="unmount and detach them first (or labkit gc)")
                return {"ok": None, "stop": True}
            if op in ("create_thin", "create_snap", "delete", "commit"):
                result = getattr(self.pool, op)(*args)
                if op != "commit":
                    self.pool.commit()  # metadata operations are durable when they return
                return {"ok": result}
            if op == "devices":
                return {"ok": self.pool.devices()}
            if op == "usage":
                return {"ok": dataclasses.asdict(self.pool.usage(*args))}
            if op == "size":
                return {"ok": self.pool.device(*args).size}
            if op == "status":
                st = self.pool.status()
                return {"ok": {"line": str(st), **dataclasses.asdict(st)}}
            if op == "mappings":  # compact: only mapped blocks, [virtual block, data block]
                return {"ok": [[vb, db] for vb, db, _ in self.pool.mappings(*args)]}
            if op == "block_map":
                return {"ok": [list(b) for b in self.pool.block_map(*args)]}
            if op == "check":
                return {"ok": dataclasses.asdict(self.pool.check())}
            raise errors.InvalidArgument(f"daemon request {op!r}", "is unknown")
        except errors.LabkitError as e:
            return {"error": {"type": type(e).__name__, "message": str(e),
                              "errno": getattr(e, "errno", None)}}
        except OSError as e:
            return {"error": {"type": "OSError", "message": str(e), "errno": e.errno}}
        except Exception as e:  # a bug must not kill the daemon that holds the pool
            log.exception("request %r failed", req)
            return {"error": {"type": "LabkitError", "message": f"thin pool daemon: {type(e).__name__}: {e}"}}

    # -- lifecycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Unmount the FUSE filesystem; the FUSE loop then returns and :meth:`run` closes the pool."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        try:
            sysmount.umount(self.mountpoint)
        except OSError as e:
            if e.errno == errno.EBUSY:
                sysmount.umount(self.mountpoint, sysmount.MNT_DETACH)
            elif e.errno != errno.EINVAL:
                log.warning("unmount %s: %s", self.mountpoint, e)

    def run(self) -> int:
        """Serve until stopped; returns the exit code."""
        _set_name(b"labkit-thin")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(self.sock_path)
        except OSError as e:  # EADDRINUSE: another daemon already serves this pool
            print(f"labkit-thin: pool {self.pool_path} already has a daemon ({e.strerror})", file=sys.stderr)
            self.pool.close()
            return 1
        server.listen(16)
        t = threading.Thread(target=self._serve, args=(server,), daemon=True, name="control")
        t.start()
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=self.stop).start())
        os.makedirs(self.mountpoint, exist_ok=True)
        try:
            mfusepy.FUSE(self.fs, self.mountpoint, **mount_options(self.pool_path))
        finally:
            self.stopping.set()
            t.join(timeout=2)
            server.close()
            self.pool.close()
        return 0


def _set_name(name: bytes) -> None:
    try:
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m labkit.thin.daemon POOL MOUNTPOINT [--idle SECONDS]``."""
    p = argparse.ArgumentParser(prog="labkit.thin.daemon")
    p.add_argument("pool")
    p.add_argument("mountpoint")
    p.add_argument("--idle", type=float, default=2.0, help="stop after this long unused (-1: never)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s labkit-thin %(levelname)s %(message)s")
    try:
        return Daemon(args.pool, args.mountpoint, idle=args.idle).run()
    except errors.LabkitError as e:
        print(f"labkit-thin: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
