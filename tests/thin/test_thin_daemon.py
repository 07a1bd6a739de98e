"""The pool daemon through the typed PoolClient: Pool's methods and types over the wire, who may talk to
it, bounded requests and clients, an isolated start, restarts, and a shared daemon for several processes."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from labkit import errors
from labkit.thin import (
    BlockInfo,
    CheckReport,
    DeviceDetails,
    Pool,
    PoolClient,
    Status,
    Usage,
    wire,
)
from labkit.thin.cli import register
from labkit.thin.gc import pool_daemons

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse (modprobe fuse)")]

BS = 64 << 10


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # our own child (started by this process's client): reap it if the reaper thread has not
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.02)
    return False


@pytest.fixture
def client(tmp_path):
    """A client of a fresh 2 MiB pool; at the end the daemon is stopped and must be gone."""
    Pool.create(tmp_path / "pool", data_size=BS * 32).close()
    c = PoolClient(str(tmp_path / "pool"), str(tmp_path / "dev"), idle=-1)
    yield c
    pid = c.daemon_info().pid if c.connect(start=False) else None
    try:
        c.stop()  # now, or (other connections still closing) as soon as it is idle
    finally:
        c.close()
        if pid:
            if not _gone(pid, 5):
                os.kill(pid, signal.SIGKILL)
            assert _gone(pid)


def test_client_has_the_pools_methods_and_types(client, tmp_path):
    c = client
    c.create_thin(1, BS * 8)
    with open(c.device_file(1), "r+b") as f:  # the daemon's FUSE file, written directly
        f.write(b"a" * (3 * BS))
        f.flush()
        os.fsync(f.fileno())
    c.create_snap(2, 1)
    with open(c.device_file(2), "r+b") as f:
        f.write(b"b")
        os.fsync(f.fileno())
    assert c.devices() == [1, 2]
    assert isinstance(c.commit(), int)
    st = c.status()
    assert isinstance(st, Status) and st.used_data_blocks == 4 and st.total_data_blocks == 32
    assert c.usage(2) == Usage(3, 1, 2) and c.usages() == {1: Usage(3, 1, 2), 2: Usage(3, 1, 2)}
    maps = c.mappings(2)
    assert [m[0] for m in maps] == [0, 1, 2] and all(isinstance(m, tuple) for m in maps)
    assert c.sharing(2)[1:] == [(1, 1, (1,)), (2, 2, (1,))]
    bm = c.block_map(1)
    assert bm[0] == BlockInfo("exclusive", 0) and bm[1] == BlockInfo("shared", 1) and bm[3].state == "unmapped"
    d = c.details(2)
    assert isinstance(d, DeviceDetails) and d.virtual_size == BS * 8 and d.mapped_blocks == 3
    rep = c.check()
    assert isinstance(rep, CheckReport) and rep.ok and rep.nr_devices == 2
    assert c.block_size == BS and c.daemon_info().ready
    c.delete(2)
    assert c.devices() == [1]


def test_client_raises_the_pools_exceptions(client, tmp_path):
    client.create_thin(1, "1M")
    with pytest.raises(errors.AlreadyExists) as remote:
        client.create_thin(1, "1M")
    with pytest.raises(errors.NotFound) as remote_nf:
        client.usage(42)
    with pytest.raises(errors.InvalidArgument):
        client.create_thin(-1, "1M")
    client.stop()
    with Pool.open(tmp_path / "pool") as p:  # the same calls on the pool itself: the same exceptions
        with pytest.raises(errors.AlreadyExists) as local:
            p.create_thin(1, "1M")
        with pytest.raises(errors.NotFound) as local_nf:
            p.usage(42)
    for r, loc in ((remote, local), (remote_nf, local_nf)):
        assert (r.value.subject, r.value.detail, r.value.fix, str(r.value)) == \
            (loc.value.subject, loc.value.detail, loc.value.fix, str(loc.value))


def _in_child_as_nobody(fn) -> str:
    """Run ``fn()`` (returning a short string) in a forked child with uid/gid 65534; its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = fn()
        except BaseException as e:  # noqa: BLE001 - the forked child reports to the parent
            out = f"error {e!r}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def _try_delete(ctl: int) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(f"/proc/self/fd/{ctl}/sock")
    except OSError as e:
        return f"refused {e.errno}"
    s.settimeout(5)
    try:
        s.sendall(wire.encode({"op": "delete", "args": [1]}))
        data = s.recv(4096)
    except OSError as e:
        return f"closed {e.errno}"
    return f"answer {data!r}" if data else "closed"


def test_other_users_get_no_answer(client, tmp_path):
    client.create_thin(1, "1M")
    ctl_path = str(tmp_path / "pool" / wire.CTL_DIR)
    ctl = os.open(ctl_path, os.O_PATH | os.O_DIRECTORY)  # handed to the child: it skips the path's 0700 parents
    try:
        out = _in_child_as_nobody(lambda: _try_delete(ctl))
        assert out.startswith("refused"), out  # the 0700 directory stops it before connect
        # open the filesystem gate on purpose: SO_PEERCRED must still turn uid 65534 away, without an answer
        os.chmod(ctl_path, 0o711)
        os.chmod(os.path.join(ctl_path, wire.SOCK), 0o666)
        try:
            out = _in_child_as_nobody(lambda: _try_delete(ctl))
        finally:
            os.chmod(os.path.join(ctl_path, wire.SOCK), 0o600)
            os.chmod(ctl_path, 0o700)
        assert out.startswith("closed"), out
    finally:
        os.close(ctl)
    assert client.devices() == [1]  # nothing was deleted; the daemon still serves root


def _raw(client: PoolClient) -> socket.socket:
    ctl = wire.open_ctl_dir(client.pool_path, create=False)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(wire.sock_address(ctl))
    finally:
        os.close(ctl)
    s.settimeout(10)
    return s


def test_oversize_request_is_refused_and_the_daemon_goes_on(client):
    client.create_thin(1, "1M")
    s = _raw(client)
    sent: list[BaseException] = []

    def send() -> None:
        try:
            s.sendall(b'{"op":"devices","args":["' + b"x" * (2 * wire.MAX_LINE) + b'"]}\n')
        except OSError as e:
            sent.append(e)
    t = threading.Thread(target=send)
    t.start()
    f = s.makefile("rb")
    reply = json.loads(f.readline())
    try:  # then dropped (reset: the daemon left the rest of the request unread)
        assert f.readline() == b""
    except ConnectionResetError:
        pass
    t.join(10)
    s.close()
    assert reply["error"]["type"] == "InvalidArgument" and "longer than" in reply["error"]["detail"]
    assert client.devices() == [1]
    s = _raw(client)  # bad JSON on a normal line: an error, the connection stays
    s.sendall(b"{nope\n" + wire.encode({"op": "devices"}))
    f = s.makefile("rb")
    assert json.loads(f.readline())["error"]["type"] == "InvalidArgument"
    assert json.loads(f.readline()) == {"ok": [1]}
    s.close()


def test_too_many_clients_are_refused(client):
    client.devices()  # the fixture's connection is one of the clients
    socks = []
    try:
        for _ in range(wire.MAX_CLIENTS - 1):
            s = _raw(client)
            s.sendall(wire.encode({"op": "ping"}))
            assert "ok" in json.loads(s.makefile("rb").readline())
            socks.append(s)
        extra = PoolClient(client.pool_path, client.mountpoint)
        with pytest.raises(errors.FailedPrecondition, match="clients already"):
            extra.devices()
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    assert extra.devices() == []
    extra.close()


def _isolation_checks(pid: int, tmp_path, secret_fd: int) -> None:
    """What both ways of starting leave: cwd /, stdin /dev/null, output to daemon.log, a session of its
    own, none of the caller's descriptors, the name gc knows, and gc finds it."""
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/1") == str(tmp_path / "pool" / "daemon.log")
    with open(f"/proc/{pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[3]) == pid          # session id: setsid
    held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert os.readlink(f"/proc/self/fd/{secret_fd}") not in held
    assert not {h for h in held if h.endswith(("thin.lock", "start.lock"))}
    with open(f"/proc/{pid}/comm") as f:
        assert f.read().strip() == "labkit-thin"
    assert not (tmp_path / "injected").exists()
    assert [p for p, _ in pool_daemons(str(tmp_path), False)] == [pid]    # gc finds it


#: forking the daemon needs a process with one thread (PoolClient refuses otherwise); the suite's own process
#: may have threads from earlier tests, so these tests run in a forked child (tests/conftest.py)
FORKED = pytest.mark.one_thread
@FORKED
@pytest.mark.parametrize("method", ["fork", "exec"])
def test_daemon_starts_isolated(tmp_path, monkeypatch, method):
    """Neither a forked daemon nor a new interpreter takes anything from its caller: a hostile mfusepy.py
    in the caller's cwd, on its sys.path and in PYTHONPATH is never imported (the forked one must import
    mfusepy itself: it is dropped from this process's modules), no variable or descriptor is inherited."""
    import labkit.thin
    Pool.create(tmp_path / "pool", data_size=BS * 32).close()
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "mfusepy.py").write_text(f"open({str(tmp_path / 'injected')!r}, 'w').close()\nraise SystemExit(3)\n")
    monkeypatch.setenv("LABKIT_TEST_MARKER", "caller-was-here")
    monkeypatch.setenv("PYTHONPATH", str(evil))
    monkeypatch.chdir(evil)
    monkeypatch.syspath_prepend(str(evil))
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    for mod in ("mfusepy", "labkit.thin.exportfs", "labkit.thin.daemon"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
        monkeypatch.delattr(labkit.thin, mod.rsplit(".", 1)[-1], raising=False)
    secret = os.open(tmp_path / "secret", os.O_RDWR | os.O_CREAT)       # inheritable, as a caller's may be
    os.set_inheritable(secret, True)
    c = PoolClient(str(tmp_path / "pool"), str(tmp_path / "dev"), idle=-1, start_method=method)
    try:
        pid = c.daemon_info().pid
        _isolation_checks(pid, tmp_path, secret)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if method == "exec":
            assert argv[1:3] == [b"-I", b"-S"] and b"labkit.thin.daemon" in argv
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
            assert b"LABKIT_TEST_MARKER" not in env and b"PYTHONPATH" not in env
        else:
            assert b"labkit.thin.daemon" not in argv                      # our own command line
            assert os.getppid() != pid and c.daemon_info().pid == pid
    finally:
        c.stop()
        c.close()
        os.close(secret)
    assert _gone(pid)


def test_forked_daemon_path_excludes_the_callers_directories(tmp_path, monkeypatch):
    from labkit.thin.client import isolated_path
    monkeypatch.setattr(sys, "path", ["", str(tmp_path), "relative", *sys.path, os.path.expanduser("~/.local/x")])
    path = isolated_path()
    assert "" not in path and str(tmp_path) not in path and "relative" not in path
    assert os.path.expanduser("~/.local/x") not in path
    assert path[0] == os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(labkit_thin_file()))))
    assert any(p.endswith("site-packages") for p in path)


def labkit_thin_file() -> str:
    import labkit.thin
    return labkit.thin.__file__


def test_start_method_fork_is_refused_with_threads_and_auto_starts_an_interpreter(tmp_path):
    Pool.create(tmp_path / "pool", data_size=BS * 32).close()
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with pytest.raises(errors.FailedPrecondition, match="threads"):
            PoolClient(str(tmp_path / "pool"), str(tmp_path / "dev"), start_method="fork").connect()
        c = PoolClient(str(tmp_path / "pool"), str(tmp_path / "dev"))
        pid = c.daemon_info().pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"labkit.thin.daemon" in f.read().split(b"\0")
        c.stop()
        c.close()
        assert _gone(pid)
    finally:
        stop.set()
        t.join()
    with pytest.raises(errors.InvalidArgument, match="start method"):
        PoolClient(str(tmp_path / "pool"), str(tmp_path / "dev"), start_method="spawn")


@FORKED
@pytest.mark.parametrize("method", ["fork", "exec"])
def test_a_daemon_that_cannot_start_says_why_at_once(tmp_path, method):
    """Readiness comes through a pipe: a daemon that dies before it is ready (no pool here) is reported
    when it dies, with its log's last line, not after the start timeout."""
    os.mkdir(tmp_path / "pool")
    c = PoolClient(str(tmp_path / "pool"), str(tmp_path / "dev"), start_method=method, start_timeout=20)
    t = time.monotonic()
    with pytest.raises(errors.Unsupported, match="ended before it was ready"):
        c.connect()
    assert time.monotonic() - t < 10
    c.close()
    assert not pool_daemons(str(tmp_path), False)


@FORKED
def test_forked_daemon_is_reaped(tmp_path):
    """A daemon this process forked is its child: stop() reaps it when it exits, close() leaves it to a
    thread when it outlives the client; no zombie either way."""
    Pool.create(tmp_path / "pool", data_size=BS * 32).close()
    c = PoolClient(str(tmp_path / "pool"), str(tmp_path / "dev"), idle=0.2, start_method="fork")
    pid = c.daemon_info().pid
    assert c.stop()
    c.close()
    assert not os.path.exists(f"/proc/{pid}")              # reaped, not a zombie
    c = PoolClient(str(tmp_path / "pool"), str(tmp_path / "dev"), idle=0.2, start_method="fork")
    pid = c.daemon_info().pid
    c.close()                                               # no stop: it stops itself when idle
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}")


def test_a_restarted_daemon_is_reconnected(client):
    client.create_thin(1, "1M")
    pid = client.daemon_info().pid
    os.kill(pid, signal.SIGTERM)
    assert _gone(pid)
    assert client.devices() == [1]          # idempotent: reconnects (starting a new daemon)
    assert client.daemon_info().pid != pid
    pid = client.daemon_info().pid
    os.kill(pid, signal.SIGTERM)
    assert _gone(pid)
    client.create_thin(2, "1M")             # not idempotent, but it could not have arrived: sent again
    assert client.devices() == [1, 2]


STARTER = textwrap.dedent("""
    import sys
    from labkit.thin import PoolClient
    c = PoolClient(sys.argv[1], sys.argv[2], idle=-1)
    print(c.daemon_info().pid, flush=True)
    sys.stdin.read()   # stay connected until told
""")


def test_concurrent_starters_share_one_daemon(tmp_path):
    Pool.create(tmp_path / "pool", data_size=BS * 32).close()
    procs = [subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path / "pool"), str(tmp_path / "dev")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        pids = {int(p.stdout.readline()) for p in procs}
    finally:
        for p in procs:
            p.communicate("", timeout=30)
    assert len(pids) == 1
    c = PoolClient(str(tmp_path / "pool"), str(tmp_path / "dev"))
    c.stop()  # at once, or as soon as the daemon has seen the starters' connections close
    c.close()
    assert _gone(pids.pop())


def _run_cli(argv):
    import argparse
    p = argparse.ArgumentParser(prog="labkit")
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


def test_cli_asks_the_daemon_that_holds_the_pool(client, capsys):
    client.create_thin(1, "1M")
    assert _run_cli(["thin", "status", client.pool_path]) == 0
    assert capsys.readouterr().out.split()[4:6] == ["rw", "no_discard_passdown"]
    assert _run_cli(["thin", "ls", client.pool_path, "--no-headers", "-o", "DEV,MAPPED_BLOCKS"]) == 0
    assert capsys.readouterr().out.split() == ["1", "0"]
    assert _run_cli(["thin", "check", client.pool_path]) == 0
    assert "checked by the pool's daemon" in capsys.readouterr().out
    assert client.devices() == [1]  # the commands' own connections did not stop it


def test_stop_is_a_request_that_never_breaks_another_client(client):
    """One CLI closing beside another (the "Broken pipe" of two shells): stop only when idle, at once."""
    client.create_thin(1, "1M")
    other = PoolClient(client.pool_path, client.mountpoint)
    assert other.devices() == [1]
    pid = other.daemon_info().pid
    t0 = time.monotonic()
    assert client.stop() is False            # another client is connected: no stop, no waiting
    assert time.monotonic() - t0 < 0.5
    client.close()
    assert other.devices() == [1] and other.daemon_info().pid == pid
    dev = other.attach(1)                    # a device in use keeps it too
    other2 = PoolClient(client.pool_path, client.mountpoint)
    assert other2.stop() is False
    other2.close()
    other.release()                          # the last user lets go: the loop device goes by itself
    other.close()                            # and with no client left the daemon stops (asked to)
    assert _gone(pid)
    assert loop_gone(dev, client.device_file(1))


def loop_gone(dev: str, backing: str, timeout: float = 5.0) -> bool:
    from labkit.thin import loopdev
    deadline = time.monotonic() + timeout
    while loopdev.backing_file(dev) == backing:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_stopping_daemons_refusal_is_sent_again_to_a_new_one(client):
    """A request that reaches a daemon after it began to stop is not done: it is answered
    ``{"stopping": true}`` (the pool may already be closed: it used to answer "thin pool ... is closed")
    and the client sends it again on a new connection, even a request that changes the pool."""
    client.devices()                                       # connected to the running daemon
    ours, theirs = socket.socketpair()

    def stopping_daemon() -> None:
        f = theirs.makefile("rwb")
        f.readline()
        f.write(wire.encode({"stopping": True}))
        f.flush()
        theirs.close()

    t = threading.Thread(target=stopping_daemon)
    t.start()
    client._drop()
    client._sock, client._file = ours, ours.makefile("rwb")   # the next request meets a stopping daemon
    client.create_thin(5, BS * 4)                          # refused there, done by the real daemon
    t.join()
    assert 5 in client.devices()
