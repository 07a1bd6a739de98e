"""The pool daemon's control channel: where its socket lives, who may use it, and how requests, results
and errors travel. Shared by :mod:`labkit.thin.daemon` and :mod:`labkit.thin.client`.

**Socket.** A pathname unix socket ``<pool>/ctl/sock``. ``ctl`` is a directory of mode 0700 owned by
the daemon's user (root), so nobody else can even reach the socket (connect needs search permission on
the directory) and nobody else can squat its name before the daemon binds it (an abstract socket would
allow both). Paths in ``sockaddr_un`` are limited to 108 bytes and a store can lie deep, so both sides
open the directory and bind/connect to ``/proc/self/fd/<fd>/sock``: a short name that resolves through
the open directory, whatever its path, and is not changed by renames of the pool directory.

**Peers.** Both ends check ``SO_PEERCRED`` as well (defence in depth, and a check that does not depend on
the filesystem's modes): the daemon answers only uid 0 or its own uid; the client talks only to a uid-0
(or its own uid's) process.

**Protocol.** JSON lines. A request ``{"op": NAME, "args": [...]}``, at most :data:`MAX_LINE` bytes (a
longer one is refused and the connection dropped); a reply ``{"ok": RESULT}`` or ``{"error": ERROR}``
where ERROR carries the exception's class name and its ``subject``, ``detail``, ``fix`` (or ``errno``), so
that :func:`decode_error` rebuilds the same exception with its own constructor; or ``{"stopping": true}``:
this daemon is shutting down and did not do the request (the client sends it again to a new daemon).

>>> e = decode_error(encode_error(__import__("labkit.errors").errors.AlreadyExists("thin device 3")))
>>> type(e).__name__, e.subject, str(e)
('AlreadyExists', 'thin device 3 already exists', 'thin device 3 already exists')
"""
from __future__ import annotations

import errno
import io
import json
import os
import socket
import stat
import struct
from typing import Any

from ..errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LabkitError,
    NotFound,
    Unsupported,
)

__all__ = ["MAX_LINE", "MAX_CLIENTS", "CTL_DIR", "SOCK", "START_LOCK", "open_ctl_dir", "sock_address", "peer_cred",
           "allowed_uid", "encode", "encode_error", "decode_error", "read_line"]

MAX_LINE = 1 << 20          #: bytes in one request line (replies are not bounded: the daemon is trusted)
MAX_CLIENTS = 16            #: connections the daemon serves at once; more are refused with an error
CTL_DIR = "ctl"             #: the 0700 directory in the pool directory
SOCK = "sock"               #: the socket's name in it
START_LOCK = "start.lock"   #: clients starting a daemon take this flock, one at a time

_KINDS: dict[str, type[LabkitError]] = {}    # filled on first use by _kinds()
# constructors that append words to the subject when detail is left out
_SUFFIX: dict[type[LabkitError], str] = {NotFound: " not found", AlreadyExists: " already exists"}


def open_ctl_dir(pool_path: str, *, create: bool) -> int:
    """An fd of ``<pool_path>/ctl`` after checking that it is a real directory (no symlink) owned by this
    uid with no access for group or others; ``create`` makes it (0700) when missing and tightens a
    too-open mode of our own directory.

    Raises ``FileNotFoundError`` when it is missing and not to be created, and
    :class:`~labkit.errors.FailedPrecondition` when someone else owns it.
    """
    path = os.path.join(pool_path, CTL_DIR)
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise FailedPrecondition(f"thin pool control directory {path}", f"is owned by uid {st.st_uid}",
                                     fix="remove it (the daemon makes its own) and check who writes the pool directory")
        if stat.S_IMODE(st.st_mode) & 0o077:
            if not create:
                raise FailedPrecondition(f"thin pool control directory {path}",
                                         f"has mode {stat.S_IMODE(st.st_mode):#o}, not 0700", fix=f"chmod 0700 {path}")
            os.fchmod(fd, 0o700)
        return fd
    except BaseException:
        os.close(fd)
        raise


def sock_address(ctl_fd: int) -> str:
    """The socket's address through the open control directory (short, whatever the pool's path)."""
    return f"/proc/self/fd/{ctl_fd}/{SOCK}"


def peer_cred(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end (``SO_PEERCRED``, taken at connect time)."""
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))


def allowed_uid(uid: int) -> bool:
    """Whom the channel accepts at the other end: root, or the same user as this process."""
    return uid == 0 or uid == os.geteuid()


def encode(obj: Any) -> bytes:
    """One JSON line."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def read_line(f: io.BufferedIOBase) -> bytes | None:
    """The next line from the binary file ``f``: ``b""`` at EOF, None when it is longer than
    :data:`MAX_LINE` (the caller refuses it and drops the connection)."""
    line = f.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        return None
    return line


def _kinds() -> dict[str, type[LabkitError]]:
    """The exceptions that travel by name. The pool's two (``PoolFull``, ``MetadataError``) are imported
    here, on the first error, not with this module: a client that sees no error (a `labkit run`) does not
    load the pool's metadata and records modules."""
    if not _KINDS:
        from .metadata import MetadataError
        from .records import PoolFull
        _KINDS.update({c.__name__: c for c in (LabkitError, NotFound, AlreadyExists, FailedPrecondition,
                                               InvalidArgument, Unsupported, PoolFull, MetadataError)})
    return _KINDS


def encode_error(e: BaseException) -> dict[str, Any]:
    """The wire form of an exception raised by a request."""
    if isinstance(e, LabkitError):
        kinds = _kinds()
        kind = next(c.__name__ for c in type(e).__mro__ if kinds.get(c.__name__) is c)
        return {"type": kind, "subject": e.subject, "detail": e.detail, "fix": e.fix, "message": str(e),
                "errno": getattr(e, "errno", None)}
    if isinstance(e, OSError):
        return {"type": "OSError", "errno": e.errno, "message": e.strerror or str(e)}
    return {"type": "LabkitError", "subject": f"thin pool daemon: {type(e).__name__}: {e}", "detail": None,
            "fix": "see daemon.log in the pool directory", "message": f"thin pool daemon: {type(e).__name__}: {e}"}


def _text(v: Any) -> str | None:
    return None if v is None else str(v)


def decode_error(err: Any) -> Exception:
    """Rebuild the daemon's exception with its class's own constructor (``subject``, ``detail`` and
    ``fix`` as they were); ``OSError`` keeps its errno; anything unknown becomes a ``LabkitError``."""
    if not isinstance(err, dict):
        return LabkitError("thin pool daemon", "sent a malformed error", fix="see daemon.log in the pool directory")
    if err.get("type") == "OSError":
        code = err.get("errno")
        return OSError(code if isinstance(code, int) else errno.EIO,
                       _text(err.get("message")) or "thin pool daemon error")
    cls = _kinds().get(str(err.get("type")), LabkitError)
    subject = _text(err.get("subject")) or _text(err.get("message")) or "thin pool daemon error"
    detail, fix = _text(err.get("detail")), _text(err.get("fix"))
    suffix = _SUFFIX.get(cls)
    if suffix and detail is None and subject.endswith(suffix):
        e = cls(subject[: -len(suffix)], fix=fix)
    else:
        e = cls(subject, detail, fix=fix)
    return e
