"""What a container's first process does between fork and exec, and what ``exec`` does to join one.

Runs in a process forked from the spawner (:mod:`labkit.containers._spawner`), never in the caller's
(possibly huge) Python process. The order matters and follows runc's ``libcontainer/rootfs_linux.go``:

1. join the cgroup (write 0 to each ``cgroup.procs``) - before anything can allocate;
2. ``unshare`` mount, UTS, IPC (and net for ``none``) or ``setns`` into a prepared network namespace;
   the PID namespace was unshared by the parent (the shim), so this process is already PID 1;
3. make every mount private, bind the rootfs on itself, mount ``/proc``, ``/sys`` (read-only), a tmpfs
   ``/dev`` with device nodes, ``/dev/pts`` (devpts newinstance), ``/dev/shm``, then the bind mounts;
4. ``pivot_root(".", ".")`` and detach the old root (no chroot: the host's root is unreachable);
5. read-only root, hostname, loopback up, groups/gid/uid, working directory, default signals, exec.

Any failure is written to the error pipe as one line ``step: message`` and the process exits 127;
a successful exec closes the pipe (it is close-on-exec), so the spawner reads EOF.

>>> from labkit.containers._setup import DEVICES
>>> sorted(DEVICES)[:2]
['full', 'null']
"""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import stat
import struct
from typing import Any

from labkit._sys import mounts as m

from . import _ns

#: device name -> (major, minor), made with mknod in the container's tmpfs /dev
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
         "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
_NOSUID_NODEV_NOEXEC = m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC


def _default_signals() -> None:
    """Python ignores SIGPIPE (and the spawner SIGCHLD); ignored signals survive exec, so reset them."""
    for s in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def loopback_up() -> None:
    """Bring ``lo`` up in the caller's network namespace (SIOCGIFFLAGS / SIOCSIFFLAGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, req)[:18])[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))


def _mkdirs(root: str, rel: str, *, file: bool = False) -> str:
    path = os.path.join(root, rel.lstrip("/"))
    if file:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            open(path, "a").close()
    else:
        os.makedirs(path, exist_ok=True)
    return path


def _dev(root: str) -> None:
    dev = _mkdirs(root, "dev")
    m.mount("tmpfs", dev, "tmpfs", m.MS_NOSUID, "mode=755,size=65536k")
    for name, (major, minor) in DEVICES.items():
        os.mknod(f"{dev}/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(f"{dev}/{name}", 0o666)
    os.mkdir(dev + "/pts")
    m.mount("devpts", dev + "/pts", "devpts", m.MS_NOSUID | m.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.mkdir(dev + "/shm")
    m.mount("shm", dev + "/shm", "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k")
    for name, target in LINKS.items():
        os.symlink(target, f"{dev}/{name}")


def setup_and_exec(spec: dict[str, Any], errw: int, netns_fd: int | None) -> None:
    """Turn this freshly forked PID 1 into the container and exec its command; never returns."""
    step = "start"
    try:
        _default_signals()
        step = "cgroup"
        for f in spec["procs_files"]:
            with open(f, "w") as fh:
                fh.write("0")
        step = "stdio"
        fin = os.open(spec.get("stdin") or "/dev/null", os.O_RDONLY)
        fout = os.open(spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        os.dup2(fin, 0)
        os.dup2(fout, 1)
        os.dup2(fout, 2)
        os.close(fin)
        os.close(fout)
        step = "namespaces"
        flags = _ns.CLONE_NEWNS | _ns.CLONE_NEWUTS | _ns.CLONE_NEWIPC
        net = spec["network"]
        if netns_fd is not None:
            _ns.setns(netns_fd, _ns.CLONE_NEWNET)
            os.close(netns_fd)
        elif net == "none":
            flags |= _ns.CLONE_NEWNET
        _ns.unshare(flags)
        step = "mounts"
        root = spec["rootfs"]
        m.mount("none", "/", None, m.MS_REC | m.MS_PRIVATE)
        m.mount(root, root, None, m.MS_BIND | m.MS_REC)
        m.mount("proc", _mkdirs(root, "proc"), "proc", _NOSUID_NODEV_NOEXEC)
        m.mount("sysfs", _mkdirs(root, "sys"), "sysfs", _NOSUID_NODEV_NOEXEC | m.MS_RDONLY)
        _dev(root)
        for src, dst, ro in spec.get("binds", []):
            step = f"bind {src}:{dst}"
            target = _mkdirs(root, dst, file=not os.path.isdir(src))
            m.mount(src, target, None, m.MS_BIND | m.MS_REC)
            if ro:
                m.mount(src, target, None, m.MS_BIND | m.MS_REMOUNT | m.MS_RDONLY | m.MS_REC)
        step = "pivot_root"
        os.chdir(root)
        _ns.pivot_root(".", ".")
        m.umount(".", m.MNT_DETACH)
        os.chdir("/")
        if spec.get("readonly"):
            step = "read-only root"
            m.mount("/", "/", None, m.MS_BIND | m.MS_REMOUNT | m.MS_RDONLY)
        step = "hostname"
        _ns.sethostname(spec["hostname"])
        if net == "none":
            step = "loopback"
            loopback_up()
        step = "user"
        os.setgroups(spec.get("groups", []))
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
        step = "workdir"
        os.chdir(spec.get("workdir") or "/")
        step = "exec"
        env = dict(e.split("=", 1) for e in spec["env"])
        os.execvpe(spec["cmd"][0], spec["cmd"], env)
    except BaseException as e:  # noqa: BLE001 - everything goes to the error pipe, then exit
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        try:
            os.write(errw, f"{step}: {msg}".encode()[:4000])
        finally:
            os._exit(127)


def join_and_exec(spec: dict[str, Any], errw: int) -> None:
    """Exec into a running container: join its cgroup and namespaces, fork into its PID namespace, exec.

    This process (the exec shim) stays outside the container's PID namespace and waits for the command;
    its output goes to ``spec["output"]``, its wait status to the already open ``status_fd``.
    """
    step = "start"
    try:
        pid = spec["pid"]
        step = "open"
        out = os.open(spec["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        fin = os.open(spec.get("stdin") or "/dev/null", os.O_RDONLY)
        status = os.open(spec["status"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        fds = {k: os.open(f"/proc/{pid}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in _ns.NS_FLAGS}
        step = "cgroup"
        for f in spec["procs_files"]:
            with open(f, "w") as fh:
                fh.write("0")
        step = "setns"
        for k, fd in fds.items():
            _ns.setns(fd, _ns.NS_FLAGS[k])
            os.close(fd)
        child = os.fork()
        if child == 0:
            try:
                _default_signals()
                os.dup2(fin, 0)
                os.dup2(out, 1)
                os.dup2(out, 2)
                os.setgroups(spec.get("groups", []))
                os.setgid(spec["gid"])
                os.setuid(spec["uid"])
                os.chdir(spec.get("workdir") or "/")
                env = dict(e.split("=", 1) for e in spec["env"])
                os.execvpe(spec["cmd"][0], spec["cmd"], env)
            except BaseException as e:  # noqa: BLE001
                os.write(errw, f"exec: {e.strerror if isinstance(e, OSError) else e}".encode()[:4000])
                os._exit(127)
        os.close(errw)
        _, st = os.waitpid(child, 0)
        os.write(status, str(st).encode())
        os._exit(0)
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(errw, f"{step}: {e.strerror if isinstance(e, OSError) else e}".encode()[:4000])
        finally:
            os._exit(127)
