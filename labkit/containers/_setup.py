"""What a container's first process does between fork and exec, and what ``exec`` does to join one.

Runs in a process forked from the spawner (:mod:`labkit.containers._spawner`), never in the caller's
(possibly huge) Python process. The order matters and follows runc's ``libcontainer/rootfs_linux.go``
and ``standard_init_linux.go``:

1. the shim moves this process into the container's cgroup (its pid to each ``cgroup.procs``) while it
   sets itself up (steps 2-6), and it waits for that before step 7, so nothing of the command ever runs
   outside the cgroup's limits (the first move after a quiet spell waits for an RCU grace period, ~7 ms
   here: it now overlaps with the mounts);
2. ``unshare`` mount, UTS, IPC (and net for ``none``) or ``setns`` into a prepared network namespace;
   the PID namespace was unshared by the parent (the shim), so this process is already PID 1;
3. make every mount private, bind the rootfs on itself and open it as a directory fd; from here on
   every path inside the rootfs is resolved with ``openat2(RESOLVE_IN_ROOT)``
   (:mod:`labkit.containers.inroot`) and mounted on through ``/proc/self/fd/N``, so a hostile symlink
   in the image cannot send a mount or a ``mkdir`` to the host;
4. make the mount points, then make the root ``nodev`` (and read-only if asked) recursively, mount
   ``/proc``, ``/sys`` (read-only), a ``nodev`` tmpfs ``/dev`` whose nodes are bind mounts of the host's
   (:data:`~labkit.containers.security.DEVICES`), ``/dev/pts``, ``/dev/shm``, then the bind mounts;
5. ``pivot_root(".", ".")`` and detach the old root (no chroot: the host's root is unreachable);
6. mask and make read-only the /proc and /sys paths of the profile, hostname, loopback up;
7. become the process (:func:`become`): rlimits, drop the bounding set, clear ambient, groups/gid/uid,
   set the capabilities, working directory, default signals, ``no_new_privs``, and - last, so nothing
   of this set-up is filtered - the seccomp filter; then exec.

Any failure is written to the error pipe as one line ``step: message`` and the process exits 127;
a successful exec closes the pipe (it is close-on-exec), so the spawner reads EOF.

>>> from labkit.containers._setup import LINKS
>>> LINKS["ptmx"]
'pts/ptmx'
"""
from __future__ import annotations

import errno
import fcntl
import os
import resource
import signal
import stat
import struct
import termios

from labkit._sys import mounts as m
from labkit._sys.libc import check, libc

from . import _ns, _privs, inroot
from .spec import ExecSpec, ProcessSpec, RunSpec

LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
         "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
_NOSUID_NODEV_NOEXEC = m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC
_SPECIAL = ("dev", "proc", "sys")           # bind targets below these are made after they are mounted


def _default_signals() -> None:
    """Python ignores SIGPIPE (and the spawner SIGCHLD); ignored signals survive exec, so reset them."""
    for s in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
              signal.SIGTTOU, signal.SIGTTIN, signal.SIGTSTP):
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


#: socket(2) arguments for an ioctl-only socket (Linux ABI): Python's socket module costs ~2 ms to import in
#: every `labkit run`, for one descriptor
_AF_INET, _SOCK_DGRAM, _SOCK_CLOEXEC = 2, 2, 0o2000000


def loopback_up() -> None:
    """Bring ``lo`` up in the caller's network namespace (SIOCGIFFLAGS / SIOCSIFFLAGS)."""
    s = check(libc.socket(_AF_INET, _SOCK_DGRAM | _SOCK_CLOEXEC, 0), "socket")
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, req)[:18])[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
    finally:
        os.close(s)


def set_mount_attrs(fd: int, attrs: int, *, recursive: bool = True) -> None:
    """Set ``MOUNT_ATTR_*`` on the mount open at ``fd`` (and every mount below it): mount_setattr(2),
    or a bind remount of that one mount on kernels before 5.12."""
    try:
        _privs.mount_setattr(fd, "", _privs.AT_EMPTY_PATH | (_privs.AT_RECURSIVE if recursive else 0), attrs)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
        flags = {_privs.MOUNT_ATTR_RDONLY: m.MS_RDONLY, _privs.MOUNT_ATTR_NOSUID: m.MS_NOSUID,
                 _privs.MOUNT_ATTR_NODEV: m.MS_NODEV, _privs.MOUNT_ATTR_NOEXEC: m.MS_NOEXEC}
        ms = sum(v for k, v in flags.items() if attrs & k)
        m.mount("none", inroot.fd_path(fd), None, m.MS_BIND | m.MS_REMOUNT | ms)


def _mount_at(root_fd: int, rel: str, source: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    fd = inroot.resolve(root_fd, rel, os.O_PATH | os.O_DIRECTORY)
    try:
        m.mount(source, inroot.fd_path(fd), fstype, flags, data)
    finally:
        os.close(fd)


def _bind_target(root_fd: int, source: str, target: str) -> int:
    """The mount point for a bind of ``source`` (a directory or a file) at ``target``, made inside the root."""
    if os.path.isdir(source):
        return inroot.mkdir_all(root_fd, target)
    return inroot.touch(root_fd, target)


def _special(target: str) -> bool:
    return target.strip("/").split("/")[0] in _SPECIAL


def _dev(root_fd: int, spec: RunSpec, privileged: bool) -> None:
    """tmpfs /dev with the allowed nodes, pts, shm and the usual links, all made through a dirfd."""
    _mount_at(root_fd, "dev", "tmpfs", "tmpfs", m.MS_NOSUID | (0 if privileged else m.MS_NODEV),
              "mode=755,size=65536k")
    dev = inroot.resolve(root_fd, "dev", os.O_PATH | os.O_DIRECTORY)   # now the tmpfs
    try:
        for name, (major, minor) in spec.devices.items():
            if privileged:
                os.mknod(name, 0o666 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=dev)
                os.chmod(name, 0o666, dir_fd=dev)
            else:       # a nodev /dev: each node is a bind mount of the host's, which keeps working
                src = f"/dev/{name}"
                st = os.stat(src)
                if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (major, minor):
                    raise OSError(errno.ENODEV, f"host {src} is not character device {major}:{minor}")
                fd = inroot.touch(root_fd, f"dev/{name}", 0o666)
                try:
                    m.mount(src, inroot.fd_path(fd), None, m.MS_BIND)
                finally:
                    os.close(fd)
        os.mkdir("pts", 0o755, dir_fd=dev)
        _mount_at(root_fd, "dev/pts", "devpts", "devpts", m.MS_NOSUID | m.MS_NOEXEC,
                  "newinstance,ptmxmode=0666,mode=0620")
        os.mkdir("shm", 0o1777, dir_fd=dev)
        _mount_at(root_fd, "dev/shm", "shm", "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k")
        for name, target in LINKS.items():
            os.symlink(target, name, dir_fd=dev)
    finally:
        os.close(dev)


def _bind(root_fd: int, source: str, target: str, ro: bool, privileged: bool) -> None:
    fd = _bind_target(root_fd, source, target)
    try:
        m.mount(source, inroot.fd_path(fd), None, m.MS_BIND | m.MS_REC)
    finally:
        os.close(fd)
    attrs = (_privs.MOUNT_ATTR_RDONLY if ro else 0)
    if not privileged and os.path.isdir(source):
        attrs |= _privs.MOUNT_ATTR_NODEV        # no device node made in a volume can be opened
    if attrs:
        fd = inroot.resolve(root_fd, target)   # the bind mount's root now
        try:
            set_mount_attrs(fd, attrs)
        finally:
            os.close(fd)


def mask_paths(masked: list[str], readonly: list[str]) -> None:
    """After pivot_root: hide ``masked`` (``/dev/null`` over a file, an empty read-only tmpfs over a
    directory) and make ``readonly`` read-only (bind on itself, then read-only recursively). Paths
    that do not exist on this kernel are skipped."""
    for p in masked:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            m.mount("tmpfs", p, "tmpfs", m.MS_RDONLY | _NOSUID_NODEV_NOEXEC, "mode=555")
        else:
            m.mount("/dev/null", p, None, m.MS_BIND)
    for p in readonly:
        if not os.path.lexists(p):
            continue
        m.mount(p, p, None, m.MS_BIND | m.MS_REC)
        fd = os.open(p, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            set_mount_attrs(fd, _privs.MOUNT_ATTR_RDONLY | _privs.MOUNT_ATTR_NOSUID | _privs.MOUNT_ATTR_NODEV
                            | _privs.MOUNT_ATTR_NOEXEC)
        finally:
            os.close(fd)


def _set_rlimits(rlimits: list[tuple[str, int, int]]) -> None:
    for name, soft, hard in rlimits:
        which = getattr(resource, f"RLIMIT_{name}")
        cur_hard = resource.getrlimit(which)[1]
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)      # raising a hard limit needs CAP_SYS_RESOURCE
        resource.setrlimit(which, (min(soft, hard), hard))


def _drop_bounding(keep: int) -> None:
    for cap in range(64):
        if keep >> cap & 1:
            continue
        try:
            _privs.prctl(_privs.PR_CAPBSET_DROP, cap)
        except OSError as e:
            if e.errno == errno.EINVAL:       # past the kernel's last capability
                return
            raise


def become(p: ProcessSpec, steps: list[str]) -> None:
    """Turn the calling (root, unconfined) process into ``p`` and exec it; never returns.

    ``steps[0]`` is kept up to date with the step running, for the error line. The seccomp filter is
    loaded last, right before exec, so no step here is filtered (runc does the same when
    ``no_new_privs`` is set).
    """
    steps[0] = "rlimits"
    _set_rlimits(p.rlimits)
    if not p.privileged:
        steps[0] = "capabilities"
        _drop_bounding(p.caps)
        try:
            _privs.prctl(_privs.PR_CAP_AMBIENT, _privs.PR_CAP_AMBIENT_CLEAR_ALL)
        except OSError as e:
            if e.errno != errno.EINVAL:       # before Linux 4.3 there is no ambient set
                raise
    steps[0] = "user"
    os.setgroups(p.groups)
    os.setgid(p.gid)
    os.setuid(p.uid)            # to a non-zero uid: the kernel clears permitted and effective
    if not p.privileged:
        steps[0] = "capabilities"
        _, permitted, _ = _privs.capget()
        keep = p.caps & permitted if p.uid == 0 else 0
        _privs.capset(keep, keep, 0)
    steps[0] = "workdir"
    os.chdir(p.workdir or "/")
    _default_signals()
    env = dict(e.split("=", 1) for e in p.env)
    if p.no_new_privs:
        steps[0] = "no_new_privs"
        _privs.prctl(_privs.PR_SET_NO_NEW_PRIVS, 1)
    if p.seccomp:
        steps[0] = "seccomp"
        _privs.seccomp_set_mode_filter(p.seccomp)
    steps[0] = "exec"
    os.execvpe(p.cmd[0], p.cmd, env)


def _stdio(stdin: str | None, out: str | None, tty_fd: int | None) -> None:
    """stdin from a file (or /dev/null), stdout+stderr to a file; or all three the pty slave ``tty_fd``,
    made the controlling terminal of a new session."""
    if tty_fd is not None:
        os.setsid()
        fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)
        for i in (0, 1, 2):
            os.dup2(tty_fd, i)
        if tty_fd > 2:
            os.close(tty_fd)
        return
    fin = os.open(stdin or "/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    fout = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640) if out else None
    os.dup2(fin, 0)
    os.close(fin)
    if fout is not None:
        os.dup2(fout, 1)
        os.dup2(fout, 2)
        os.close(fout)


def _fail(errw: int, step: str, e: BaseException) -> None:
    msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    try:
        os.write(errw, f"{step}: {msg}".encode()[:4000])
    finally:
        os._exit(127)


def setup_and_exec(spec: RunSpec, errw: int, netns_fd: int | None, tty_fd: int | None = None, *,
                   joined: int | None = None) -> None:
    """Turn this freshly forked PID 1 into the container and exec its command; never returns.

    ``joined``: a pipe the shim writes one byte to once it has moved this process into the cgroup (EOF
    without it: the shim failed and reported why); without it this process joins the cgroup itself,
    first."""
    steps = ["start"]
    p = spec.process
    try:
        _default_signals()
        if joined is None:
            steps[0] = "cgroup"
            for f in spec.procs_files:
                with open(f, "w") as fh:
                    fh.write("0")
        steps[0] = "stdio"
        _stdio(spec.stdin, spec.log, tty_fd)
        steps[0] = "namespaces"
        flags = _ns.CLONE_NEWNS | _ns.CLONE_NEWUTS | _ns.CLONE_NEWIPC
        if netns_fd is not None:
            _ns.setns(netns_fd, _ns.CLONE_NEWNET)
            os.close(netns_fd)
        elif spec.network == "none":
            flags |= _ns.CLONE_NEWNET
        _ns.unshare(flags)
        steps[0] = "mounts"
        root = spec.rootfs
        m.mount("none", "/", None, m.MS_REC | m.MS_PRIVATE)
        m.mount(root, root, None, m.MS_BIND | m.MS_REC)
        rfd = inroot.open_root(root)
        for d in _SPECIAL:
            os.close(inroot.mkdir_all(rfd, d))
        for src, dst, _ro in spec.binds:        # mount points while the root is still writable
            if not _special(dst):
                steps[0] = f"bind {src}:{dst}"
                os.close(_bind_target(rfd, src, dst))
        steps[0] = "mounts"
        attrs = (0 if p.privileged else _privs.MOUNT_ATTR_NODEV) | (_privs.MOUNT_ATTR_RDONLY if spec.readonly else 0)
        if attrs:
            steps[0] = "read-only root" if spec.readonly else "mounts"
            set_mount_attrs(rfd, attrs)
            steps[0] = "mounts"
        _mount_at(rfd, "proc", "proc", "proc", _NOSUID_NODEV_NOEXEC)
        _mount_at(rfd, "sys", "sysfs", "sysfs", _NOSUID_NODEV_NOEXEC | (0 if p.privileged else m.MS_RDONLY))
        _dev(rfd, spec, p.privileged)
        for src, dst, ro in spec.binds:
            steps[0] = f"bind {src}:{dst}"
            _bind(rfd, src, dst, ro, p.privileged)
        steps[0] = "pivot_root"
        os.fchdir(rfd)
        os.close(rfd)
        _ns.pivot_root(".", ".")
        m.umount(".", m.MNT_DETACH)
        os.chdir("/")
        steps[0] = "masked paths"
        mask_paths(spec.masked_paths, spec.readonly_paths)
        steps[0] = "hostname"
        _ns.sethostname(spec.hostname)
        if spec.network == "none":
            steps[0] = "loopback"
            loopback_up()
        if joined is not None:
            steps[0] = "cgroup"
            if os.read(joined, 1) != b"1":
                os._exit(127)           # the shim could not move us and has said why on the error pipe
            os.close(joined)
        become(p, steps)
    except BaseException as e:  # noqa: BLE001 - everything goes to the error pipe, then exit
        _fail(errw, steps[0], e)


def join_and_exec(spec: ExecSpec, errw: int, tty_fd: int | None = None) -> None:
    """Exec into a running container: join its cgroup and namespaces, fork into its PID namespace, exec.

    This process (the exec shim) stays outside the container's PID namespace and waits for the command;
    its output goes to ``spec.output`` (or the pty), its wait status to ``spec.status``.
    """
    steps = ["start"]
    try:
        steps[0] = "open"
        out = os.open(spec.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        status = os.open(spec.status, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        fin = os.open(spec.stdin or "/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        fds = {k: os.open(f"/proc/{spec.pid}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in _ns.NS_FLAGS}
        steps[0] = "cgroup"
        for f in spec.procs_files:
            with open(f, "w") as fh:
                fh.write("0")
        steps[0] = "setns"
        for k, fd in fds.items():
            _ns.setns(fd, _ns.NS_FLAGS[k])
            os.close(fd)
        child = os.fork()
        if child == 0:
            csteps = ["stdio"]
            try:
                if tty_fd is not None:
                    _stdio(None, None, tty_fd)
                else:
                    os.dup2(fin, 0)
                    os.dup2(out, 1)
                    os.dup2(out, 2)
                become(spec.process, csteps)
            except BaseException as e:  # noqa: BLE001
                _fail(errw, csteps[0], e)
        os.close(errw)
        if tty_fd is not None:
            os.close(tty_fd)
        _, st = os.waitpid(child, 0)
        os.write(status, str(st).encode())
        os._exit(0)
    except BaseException as e:  # noqa: BLE001
        _fail(errw, steps[0], e)
