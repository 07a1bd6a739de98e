"""Published ports (``labkit run -p [IP:]HOST:CTR``): a small userspace TCP proxy per container, as Docker's
``docker-proxy`` does, so nothing on the host's firewall or sysctls changes.

The proxy listens on ``IP:HOST`` (127.0.0.1 unless another address is given: a course machine does not
expose a student's web server to the network by accident) and relays each connection to the container's
address on the labkit bridge. It is its own process (``python -I``, started detached, command line naming
``labkit.containers.proxy`` and the container), it binds before the caller returns (a port in use is a
one-line error), and it exits by itself when the container's PID 1 exits (it waits on a pidfd), so it is
released on every exit path; ``labkit gc`` ends any proxy whose container is gone.

>>> parse_publish("8080:80"), parse_publish("0.0.0.0:8443:443/tcp")
(Publish(host_ip='127.0.0.1', host_port=8080, container_port=80),
 Publish(host_ip='0.0.0.0', host_port=8443, container_port=443))
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from .. import errors
from .._sys import leftovers
from .._sys.leftovers import Leftover, collector, inside
from ._proc import send_signal, starttime

__all__ = ["Publish", "parse_publish", "start_proxy", "proxy_leftovers"]

MARK = "labkit.containers.proxy"
MAX_CONNECTIONS = 64


@dataclass(frozen=True)
class Publish:
    """One published port: ``host_ip:host_port`` on the host relays to ``container_port`` in the container."""

    host_ip: str
    host_port: int
    container_port: int


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise errors.InvalidArgument(f"published port {spec!r}", f"has no valid port {text!r}",
                                     fix="write [IP:]HOST:CONTAINER with ports 1-65535, e.g. -p 8080:80")
    return int(text)


def parse_publish(spec: str) -> Publish:
    """``[IP:]HOST:CONTAINER[/tcp]`` as Docker writes it; the host address defaults to 127.0.0.1."""
    body, _, proto = spec.partition("/")
    if proto and proto != "tcp":
        raise errors.InvalidArgument(f"published port {spec!r}", f"uses {proto}", fix="labkit publishes tcp only")
    parts = body.rsplit(":", 2)
    if len(parts) == 2:
        ip, host, ctr = "127.0.0.1", parts[0], parts[1]
    elif len(parts) == 3:
        ip, host, ctr = parts
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise errors.InvalidArgument(f"published port {spec!r}", f"has no IPv4 address {ip!r}",
                                         fix="write e.g. -p 127.0.0.1:8080:80") from None
    else:
        raise errors.InvalidArgument(f"published port {spec!r}", "is not [IP:]HOST:CONTAINER",
                                     fix="write e.g. -p 8080:80")
    return Publish(ip, _port(host, spec), _port(ctr, spec))


def start_proxy(cid: str, state_dir: str, pid: int, target_ip: str, ports: Sequence[Publish]) -> int:
    """Start the proxy of container ``cid`` (PID 1 ``pid``, address ``target_ip``); returns its pid once
    every port is bound, or raises a one-line error (e.g. the port is in use) with nothing left running."""
    parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r, w = os.pipe()
    argv = [sys.executable, "-I", "-c",
            f"import sys; sys.path.insert(0, {parent!r}); from labkit.containers.proxy import main; main()",
            MARK, "--cid", cid, "--state", state_dir, "--pid", str(pid), "--target", target_ip, "--ready", str(w)]
    for p in ports:
        argv += ["--map", f"{p.host_ip}:{p.host_port}:{p.container_port}"]
    proc = subprocess.Popen(argv, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd="/", start_new_session=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    os.close(w)
    with os.fdopen(r) as f:
        answer = f.readline().strip()
    if answer != "ok":
        proc.kill()
        proc.wait()
        raise errors.FailedPrecondition(f"publishing ports of container {cid}", answer or "the proxy did not start",
                                        fix="choose another host port (-p OTHER:CONTAINER) or stop what uses it")
    threading.Thread(target=proc.wait, daemon=True).start()   # reap it if it ends while we still run
    return proc.pid


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _relay(client: socket.socket, target: tuple[str, int], slots: threading.BoundedSemaphore) -> None:
    try:
        with client, socket.create_connection(target, timeout=5) as upstream:
            upstream.settimeout(None)
            t = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            t.start()
            _pump(client, upstream)
            t.join()
    except OSError:
        pass
    finally:
        slots.release()


def main(argv: Sequence[str] | None = None) -> None:
    """The proxy process (see the module docstring)."""
    p = argparse.ArgumentParser(prog=MARK)
    p.add_argument("mark")
    p.add_argument("--cid", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--ready", type=int, required=True)
    p.add_argument("--map", action="append", default=[])
    a = p.parse_args(argv)
    ready = os.fdopen(a.ready, "w")
    listeners: dict[int, tuple[socket.socket, int]] = {}
    try:
        for m in a.map:
            ip, host, ctr = m.rsplit(":", 2)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, int(host)))
            s.listen(64)
            listeners[s.fileno()] = (s, int(ctr))
    except OSError as e:
        ready.write(f"{a.map[len(listeners)] if len(listeners) < len(a.map) else ''}: {e.strerror or e}\n")
        ready.close()
        return
    try:
        container = os.pidfd_open(a.pid)
    except ProcessLookupError:            # it has already exited: nothing to relay to
        ready.write("ok\n")
        ready.close()
        return
    ready.write("ok\n")
    ready.close()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    while True:
        readable, _, _ = select.select([container, *listeners], [], [])
        if container in readable:          # the container's PID 1 exited: so do we
            os._exit(0)
        for fd in readable:
            s, port = listeners[fd]
            try:
                client, _ = s.accept()
            except OSError:
                continue
            if not slots.acquire(blocking=False):
                client.close()             # bounded: a flood costs refused connections, not the host
                continue
            threading.Thread(target=_relay, args=(client, (a.target, port), slots), daemon=True).start()


def _proxies() -> list[tuple[int, list[str]]]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != 0:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [x.decode(errors="replace") for x in f.read().split(b"\0") if x]
        except OSError:
            continue
        if MARK in argv[3:5]:
            out.append((int(pid), argv))
    return out


def _arg(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else ""


def _end(pid: int, start: int | None) -> None:
    """SIGTERM through a pidfd checked against the start time seen when it was found (never a reused pid)."""
    send_signal(pid, start, signal.SIGTERM)


@collector(order=leftovers.CONTAINERS)
def proxy_leftovers(root: str, everything: bool) -> list[Leftover]:
    """Port proxies whose container is gone (every proxy with ``everything``) for the store at ``root``."""
    out = []
    for pid, argv in _proxies():
        state = _arg(argv, "--state")
        if not (everything or (state and inside(os.path.realpath(state), root))):
            continue
        ctr = _arg(argv, "--pid")
        if not everything and ctr.isdigit() and os.path.exists(f"/proc/{ctr}"):
            continue                       # its container still runs: the proxy is in use
        out.append(Leftover("proxy", str(pid), f"ports of container {_arg(argv, '--cid')}",
                            partial(_end, pid, starttime(pid))))
    return out
