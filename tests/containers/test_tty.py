"""Interactive containers: a pseudo-terminal as the process's controlling terminal, and attach()."""
from __future__ import annotations

import os
import select
import termios
import threading
import time

import pytest

from labkit import errors
from labkit.containers.tty import get_winsize, set_winsize

pytestmark = pytest.mark.root


class Term:
    """Reads a Pty with a buffer: ``expect(b"x")`` returns everything up to and including ``x``."""

    def __init__(self, pty) -> None:
        self.pty, self.buf = pty, b""

    def expect(self, needle: bytes, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no {needle!r} in {self.buf!r}"
            self.buf += self.pty.read(timeout=left)
        i = self.buf.index(needle) + len(needle)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def prompt(self) -> None:
        """Wait for busybox ash's prompt; it asks the terminal where the cursor is (ESC[6n): answer."""
        self.expect(b"\x1b[6n")
        self.pty.write(b"\x1b[1;1R")


def test_sh_on_a_tty_echoes_and_exits_with_its_code(rt, rootfs):
    c = rt.run(rootfs, ["sh"], tty=True, stdin=True)
    assert c.pty is not None and c.running                       # run returned at once
    c.pty.resize(40, 123)
    t = Term(c.pty)
    t.prompt()
    c.pty.write(b"stty size; echo $TERM; [ -t 0 ] && echo is-$((1+1))-tty\n")
    out = t.expect(b"is-2-tty\r\n")                          # (the echo of the line says $((1+1)))
    assert b"40 123" in out and b"xterm" in out
    t.prompt()
    c.pty.write(b"echo hel''lo\n")
    assert b"echo hel''lo" in t.expect(b"hello\r\n")           # the terminal echoes what was typed
    t.prompt()
    c.pty.write(b"exit 3\n")
    assert c.wait(10) == 3 and c.pty.wait() == 3
    assert c.logs() == ""                                        # the output went to the terminal


def test_exec_with_a_tty(rt, rootfs):
    c = rt.run(rootfs, ["sleep", "30"], detach=True)
    pty = c.exec(["sh"], tty=True)
    t = Term(pty)
    t.prompt()
    pty.write(b"echo $$ in $(hostname); grep Seccomp: /proc/self/status; exit 4\n")
    out = t.expect(b"Seccomp:\t2")
    assert b" in " in out
    assert pty.wait(10) == 4
    pty.close()
    c.remove(force=True)


def test_attach_proxies_a_terminal_and_restores_it(rt, rootfs):
    """attach() with our own pty standing in for the user's terminal."""
    user_master, user_slave = os.openpty()
    set_winsize(user_slave, 30, 90)
    before = termios.tcgetattr(user_slave)
    c = rt.run(rootfs, ["sh", "-c", "read line; stty size; echo got-$line; exit 5"], tty=True)
    result: list = []
    t = threading.Thread(target=lambda: result.append(c.pty.attach(user_slave, user_slave)))
    t.start()
    deadline = time.monotonic() + 10          # type only once attach() has put the terminal in raw mode
    while termios.tcgetattr(user_slave)[3] & termios.ICANON and time.monotonic() < deadline:
        time.sleep(0.01)
    os.write(user_master, b"abc\r")
    buf = b""
    deadline = time.monotonic() + 30
    while b"got-abc" not in buf and time.monotonic() < deadline:
        if select.select([user_master], [], [], 0.2)[0]:
            buf += os.read(user_master, 4096)
    t.join(30)
    assert result == [5], buf
    assert b"30 90" in buf and b"got-abc" in buf
    assert termios.tcgetattr(user_slave) == before              # raw mode undone
    assert get_winsize(user_slave) == (30, 90)
    os.close(user_master)
    os.close(user_slave)


def test_tty_arguments_are_checked(rt, rootfs):
    with pytest.raises(errors.InvalidArgument, match="tty=True"):
        rt.run(rootfs, ["true"], stdin=True)
    with pytest.raises(errors.InvalidArgument, match="tty=True"):
        rt.run(rootfs, ["true"], tty=True, stdin=b"x")
    assert rt.ps() == []


def test_cli_helpers_attach_and_exec_attach(rt, rootfs):
    """tty.attach / tty.exec_attach, as labkit's CLI uses them (stdin here is not a terminal)."""
    from labkit.containers import tty
    c = rt.run(rootfs, ["sh", "-c", "exit 6"], tty=True, name="t1")
    assert rt.get("t1").pty is c.pty                 # the Runtime keeps the terminal it made
    r, w = os.pipe()
    os.close(w)                                      # our "keyboard" is at EOF at once
    out = os.open(os.devnull, os.O_WRONLY)
    try:
        assert c.pty.attach(r, out) == 6
    finally:
        os.close(r)
        os.close(out)
    plain = rt.run(rootfs, ["sleep", "30"], detach=True)
    with pytest.raises(errors.FailedPrecondition, match="no terminal"):
        tty.attach(plain)
    plain.remove(force=True)
