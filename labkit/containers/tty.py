"""Terminals for interactive containers: the master side of a pseudo-terminal, and a proxy to yours.

``Runtime.run(..., tty=True)`` and ``Container.exec(..., tty=True)`` make a pty pair (``os.openpty``);
the slave becomes stdin, stdout, stderr and the controlling terminal of the container's process (a
session leader), the caller keeps the master as a :class:`Pty`. Either talk to it
(:meth:`Pty.read`/:meth:`Pty.write`, e.g. with ``pexpect.fdpexpect``) or :meth:`Pty.attach` your own
terminal: raw mode, the window size copied now and on every ``SIGWINCH``, everything restored on every
way out (exit, exception, ^C in the caller).

>>> c = rt.run(rootfs, ["sh"], tty=True)            # doctest: +SKIP
>>> c.pty.attach()                                  # doctest: +SKIP
/ # exit 3
3

For a CLI: :func:`attach` (``run -it``) and :func:`exec_attach` (``exec -it``).
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import struct
import termios
import threading
import tty as _tty
from collections.abc import Callable, Sequence
from typing import Any

from labkit import errors


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ: the terminal at ``fd`` has ``rows`` x ``cols`` (the process gets SIGWINCH)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_winsize(fd: int) -> tuple[int, int]:
    """TIOCGWINSZ: ``(rows, cols)`` of the terminal at ``fd``."""
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


class Pty:
    """The master side of a container process's terminal; ``wait()`` gives the process's exit code."""

    def __init__(self, fd: int, wait: Callable[[float | None], int | None]) -> None:
        self.fd = fd
        self._wait = wait

    def read(self, n: int = 65536, timeout: float | None = None) -> bytes:
        """Up to ``n`` bytes of output (``b""`` once the process side is closed, or after ``timeout``)."""
        if timeout is not None and not select.select([self.fd], [], [], timeout)[0]:
            return b""
        try:
            return os.read(self.fd, n)
        except OSError as e:
            if e.errno == errno.EIO:        # every slave fd closed: the process (tree) is gone
                return b""
            raise

    def write(self, data: bytes) -> None:
        """Type ``data`` into the terminal."""
        while data:
            data = data[os.write(self.fd, data):]

    def resize(self, rows: int, cols: int) -> None:
        set_winsize(self.fd, rows, cols)

    def wait(self, timeout: float | None = None) -> int | None:
        """The process's exit code once it ended (``TimeoutError`` after ``timeout``)."""
        return self._wait(timeout)

    def attach(self, stdin: int = 0, stdout: int = 1) -> int | None:
        """Proxy your terminal (``stdin``/``stdout`` fds) to the process until its side closes; return
        its exit code. Raw mode and window size are set only where ``stdin`` is a terminal, and the old
        mode is restored however this returns."""
        is_tty = os.isatty(stdin)
        old = termios.tcgetattr(stdin) if is_tty else None
        prev_handler = None
        main = threading.current_thread() is threading.main_thread()
        try:
            if is_tty:
                _tty.setraw(stdin)
                self.resize(*get_winsize(stdin))
                if main:
                    prev_handler = signal.signal(signal.SIGWINCH,
                                                 lambda *_: self.resize(*get_winsize(stdin)))
            self._pump(stdin, stdout)
        finally:
            if old is not None:
                termios.tcsetattr(stdin, termios.TCSAFLUSH, old)
            if prev_handler is not None:
                signal.signal(signal.SIGWINCH, prev_handler)
        return self.wait()

    def _pump(self, stdin: int, stdout: int) -> None:
        watch = [self.fd, stdin]
        while True:
            try:
                ready = select.select(watch, [], [])[0]
            except InterruptedError:
                continue
            if self.fd in ready:
                data = self.read()
                if not data:
                    return
                while data:
                    data = data[os.write(stdout, data):]
            if stdin in ready:
                data = os.read(stdin, 65536)
                if data:
                    self.write(data)
                else:
                    watch = [self.fd]        # our input ended; keep showing output until it exits

    def close(self) -> None:
        """Close the master (the process gets SIGHUP if it still runs)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Pty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


def attach(container: Any) -> int:
    """Attach this process's terminal to a ``tty=True`` container started by this process's Runtime
    (``Runtime.get`` hands back the same terminal); return its exit code. For ``labkit run -it``."""
    pty = getattr(container, "pty", None)
    if pty is None:
        raise errors.FailedPrecondition(f"container {container.name}", "has no terminal in this process",
                                        fix="start it with tty=True from this process")
    code = pty.attach()
    return 0 if code is None else code


def exec_attach(container: Any, cmd: Sequence[str], **kw: Any) -> int:
    """``exec -it``: run ``cmd`` in the container on a new terminal, attach this one, return its exit code."""
    with container.exec(cmd, tty=True, **kw) as pty:
        code = pty.attach()
    return 0 if code is None else code
