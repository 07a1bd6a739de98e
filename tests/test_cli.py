"""The labkit command: version, backends, one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from labkit import __version__
from labkit.cli import main


def labkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True)


def test_version():
    r = labkit("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"labkit {__version__}"


@pytest.mark.root
def test_backends_lists_the_four_that_run_here(tmp_path):
    """copy, overlay, btrfs and reflink run wherever the kernel has their filesystems (this machine does:
    a 'no' here is a failure); a kernel without one skips, naming it."""
    from labkit._sys.probe import has_filesystem
    missing = [fs for fs in ("overlay", "btrfs", "xfs") if not has_filesystem(fs)]
    if missing:
        pytest.skip(f"this kernel lacks {', '.join(missing)} (see /proc/filesystems)")
    r = labkit("--root", str(tmp_path), "backends")
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:-1]}
    for name in ("copy", "overlay", "btrfs", "reflink"):
        assert lines[name].split()[1] == "yes", lines[name]
    assert "dmthin" in lines  # listed, with the reason it does not run


def test_unknown_backend_is_one_line_error(tmp_path, capsys):
    rc = main(["--root", str(tmp_path), "bench", "snapshot-time", "--backend", "zfs", "--sizes", "1M"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "zfs" in err and "choose from" in err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_root_is_accepted_after_the_command(tmp_path, capsys):
    assert main(["gc", "--root", str(tmp_path), "--dry-run"]) == 0
    assert str(tmp_path) in capsys.readouterr().out


@pytest.mark.root
def test_docker_shaped_verbs(tmp_path):
    R = ["--root", str(tmp_path / "lab"), "--backend", "overlay"]
    assert labkit("image", "import", "busybox", "--tag", "busybox", *R).returncode == 0
    r = labkit("run", "--name", "b1", "busybox", *R, "--", "sh", "-c", "echo hi > /hello")
    assert r.returncode == 0, r.stderr
    assert labkit("commit", "b1", "hello:v1", *R).returncode == 0
    assert labkit("rm", "b1", *R).returncode == 0
    r = labkit("run", "--rm", "hello:v1", *R, "--", "cat", "/hello")
    assert r.stdout == "hi\n", r.stderr
    assert "hello:v1" in labkit("image", "tree", *R).stdout
    r = labkit("image", "rm", "busybox", *R)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "used by image" in r.stderr
    r = labkit("run", "nope:1", *R, "--", "true")
    assert r.returncode == 125 and "not found" in r.stderr and r.stderr.count("\n") == 1
    assert "labkit images" in r.stderr and "images()" not in r.stderr      # CLI words, not Python calls


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli") / "lab")
    r = labkit("image", "import", "busybox", "--root", root, "--backend", "overlay")
    assert r.returncode == 0, r.stderr
    return ["--root", root, "--backend", "overlay"]


@pytest.mark.root
def test_exit_codes_like_docker(lab_root):
    assert labkit("run", "--rm", "busybox", *lab_root, "--", "sh", "-c", "exit 3").returncode == 3
    assert labkit("run", "--rm", "busybox", *lab_root, "--", "/no/such/cmd").returncode == 127
    assert labkit("run", "--rm", "busybox", *lab_root, "--", "/etc/passwd").returncode == 126
    r = labkit("run", "--rm", "--name", "x/../../v", "busybox", *lab_root, "--", "true")
    assert r.returncode == 125 and r.stderr.count("\n") == 1 and "container name" in r.stderr


@pytest.mark.root
def test_ps_all_quiet_json_and_human_tables(lab_root):
    import json
    r = labkit("run", "--name", "done1", "busybox", *lab_root, "--", "true")
    assert r.returncode == 0, r.stderr
    try:
        assert "done1" not in labkit("ps", *lab_root).stdout              # running only
        out = labkit("ps", "-a", *lab_root).stdout
        assert out.splitlines()[0].startswith("CONTAINER ID") and "done1" in out and "exited (0)" in out
        assert "None" not in out
        ids = labkit("ps", "-a", "-q", *lab_root).stdout.split()
        rows = json.loads(labkit("ps", "-a", "--format", "json", *lab_root).stdout)
        assert [r["id"][:12] for r in rows] == ids and rows[0]["name"] == "done1"
        imgs = labkit("images", *lab_root).stdout.splitlines()
        assert imgs[0].split()[:2] == ["IMAGE", "ID"] and " MB" in imgs[1]
        assert "ago" in imgs[1] or "just now" in imgs[1]
        exact = labkit("images", "--bytes", *lab_root).stdout.splitlines()[1]
        assert any(w.isdigit() and int(w) > 100000 for w in exact.split())
        hist = labkit("image", "history", "busybox", *lab_root).stdout.splitlines()
        assert hist[0].startswith("IMAGE") and "CREATED BY" in hist[0]
        assert labkit("df", *lab_root).stdout.startswith("KIND")
    finally:
        labkit("rm", "done1", *lab_root)


@pytest.mark.root
def test_run_options_from_docker_habit(lab_root, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from host\n")
    envf = tmp_path / "env"
    envf.write_text("# comment\nGREETING=hello\n\n")
    r = labkit("run", "--rm", "-v", f"{data}:/data:ro", "--env-file", str(envf), "-e", "X=1", "-w", "/data",
               "-u", "nobody", "--hostname", "box", "busybox", *lab_root, "--",
               "sh", "-c",
               'cat in.txt; echo $GREETING $X; pwd; id -un; hostname; (echo x > /data/w) 2>/dev/null || echo ro')
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:6] == ["from host", "hello 1", "/data", "nobody", "box", "ro"], r.stdout
    assert not (data / "w").exists()
    r = labkit("run", "--rm", "--entrypoint", "echo", "busybox", *lab_root, "--", "a", "b")
    assert r.stdout == "a b\n", r.stderr
    r = labkit("run", "--rm", "-v", "relative:/x", "busybox", *lab_root, "--", "true")
    assert r.returncode == 125 and "absolute host path" in r.stderr


@pytest.mark.root
def test_ctrl_c_reaches_the_container(lab_root):
    """Ctrl-C on `labkit run` once returned 0 while the container ran on."""
    import signal
    import time
    p = subprocess.Popen([sys.executable, "-m", "labkit.cli", "run", "--rm", "--name", "sleeper", "busybox",
                          *lab_root, "--", "sh", "-c", "trap 'exit 42' INT; echo up; while :; do sleep 0.1; done"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=10) == 42 and time.monotonic() - t < 5
    p = subprocess.Popen([sys.executable, "-m", "labkit.cli", "run", "--rm", "busybox", *lab_root, "--",
                          "sh", "-c", "echo up; exec sleep 30"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    p.send_signal(signal.SIGINT)                         # sleep as PID 1 ignores SIGINT: killed after 2 s
    assert p.wait(timeout=10) in (130, 137)
    assert "sleeper" not in labkit("ps", "-a", *lab_root).stdout


def test_info_and_completion():
    r = labkit("info", "--format", "json")
    import json
    data = json.loads(r.stdout)
    assert data["labkit"] == __version__ and "kernel_features" in data and data["default_backend"]
    script = labkit("completion", "bash").stdout
    r = subprocess.run(["bash", "-c", script + '\nCOMP_WORDS=(labkit image ""); COMP_CWORD=2; _labkit; '
                        'echo "${COMPREPLY[@]}"'], capture_output=True, text=True)
    assert "import" in r.stdout.split() and "prune" in r.stdout.split(), r.stderr


@pytest.mark.root
def test_publish_a_port_on_loopback(lab_root, tmp_path):
    import time
    import urllib.request

    from labkit.containers.proxy import _proxies
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello web\n")
    r = labkit("run", "-d", "--name", "web", "-p", "18089:80", "-v", f"{www}:/www:ro", "busybox", *lab_root,
               "--", "httpd", "-f", "-p", "80", "-h", "/www")
    assert r.returncode == 0, r.stderr
    try:
        body = ""
        for _ in range(50):
            try:
                body = urllib.request.urlopen("http://127.0.0.1:18089/index.html", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert body == "hello web\n"
        proxies = [argv for _pid, argv in _proxies() if "127.0.0.1:18089:80" in argv]
        assert proxies, "the proxy listens on 127.0.0.1 by default"
        r = labkit("run", "--rm", "-p", "18089:80", "busybox", *lab_root, "--", "sleep", "5")
        assert r.returncode == 125 and "Address already in use" in r.stderr and r.stderr.count("\n") == 1
        r = labkit("run", "--rm", "--net", "none", "-p", "18090:80", "busybox", *lab_root, "--", "true")
        assert r.returncode == 125 and "needs a network" in r.stderr
    finally:
        labkit("rm", "-f", "web", *lab_root)
    for _ in range(50):                      # the proxy follows its container out
        if not [a for _p, a in _proxies() if "127.0.0.1:18089:80" in a]:
            break
        time.sleep(0.1)
    assert not [a for _p, a in _proxies() if "127.0.0.1:18089:80" in a]


@pytest.mark.root
def test_detached_run_returns_at_once_under_a_pipe(lab_root):
    """`$(labkit run -d ...)` once waited for the container to exit: its shim held the caller's stdout."""
    r = subprocess.run([sys.executable, "-m", "labkit.cli", "run", "-d", "--name", "bg", "busybox", *lab_root, "--",
                        "sleep", "30"], capture_output=True, text=True, timeout=20)
    try:
        assert r.returncode == 0 and r.stdout == "bg\n", r.stderr
    finally:
        labkit("rm", "-f", "bg", *lab_root)


@pytest.mark.root
def test_run_it_is_a_real_terminal(lab_root):
    """`labkit run -it busybox sh` in a terminal: a prompt, echo, window size, Ctrl-C reaches the shell
    (not labkit), the exit status comes back, and the terminal is restored."""
    import os
    import pty
    import select
    import termios
    import time
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-m", "labkit.cli", "run", "-it", "--rm", "busybox", *lab_root,
                                  "--", "sh"])
    import fcntl
    import struct
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    buf = b""

    def expect(what: bytes, timeout: float = 30) -> bytes:
        nonlocal buf
        end = time.monotonic() + timeout
        while what not in buf and time.monotonic() < end:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    buf += os.read(fd, 4096)
                except OSError:
                    break
        assert what in buf, buf[-400:]
        out, buf = buf, b""
        return out

    expect(b"# ")
    os.write(fd, b"stty size; [ -t 0 ] && echo on-a-$((1+1))-tty\r")
    out = expect(b"on-a-2-tty\r\n")
    assert b"33 101" in out
    os.write(fd, b"sleep 30\r")
    time.sleep(0.5)
    os.write(fd, b"\x03")                                  # Ctrl-C ends sleep, not labkit
    expect(b"# ")
    os.write(fd, b"exit 7\r")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7
    os.close(fd)


def test_verb_map_matches_the_parser():
    """`labkit VERB` imports only VERB's module: the map must name every verb the full parser has."""
    import argparse

    from labkit.cli import VERB_MODULES, build_parser
    full = build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    builtin = {"backends", "gc", "bench"}
    assert set(sub.choices) - builtin == set(VERB_MODULES)
    for verb in VERB_MODULES:
        one = build_parser(verb)
        s = next(a for a in one._actions if isinstance(a, argparse._SubParsersAction))
        assert verb in s.choices
