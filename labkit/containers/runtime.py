"""The container runtime: :class:`Runtime` runs commands in containers, :class:`Container` manages one.

A container is a process tree in new mount, PID, UTS, IPC and (unless ``network="host"``) network
namespaces, rooted (pivot_root) in a directory the caller prepared - typically a snapshot mount from
:mod:`labkit.snapshots` - and held in the cgroup ``labkit/<id>``. Its state lives in
``<state_dir>/<id>/``: ``state.json``, ``log`` (stdout and stderr), ``exit`` (the wait status, written
by the shim), so a detached container can be listed, exec'd, stopped and removed from any process.

PID 1 in the container is the command itself, as in ``docker run`` without ``--init``: no extra exec on
the start path, ``echo $$`` says 1, and the classic PID-1 lesson stays visible - a PID 1 without a
SIGTERM handler ignores SIGTERM, so :meth:`Container.stop` falls back to SIGKILL after its timeout.
Zombies of a command that does not reap are released when PID 1 exits (the kernel kills the namespace).

>>> from labkit.containers import Runtime
>>> with Runtime("/tmp/lk-state") as rt:                                   # doctest: +SKIP
...     c = rt.run("/tmp/rootfs", ["sh", "-c", "echo hi from $(hostname)"], name="box")
...     c.exit_code, c.logs()
(0, 'hi from box\\n')
"""
from __future__ import annotations

import builtins
import json
import os
import shutil
import stat
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from signal import SIGKILL, SIGTERM
from typing import TYPE_CHECKING, Any

from labkit import errors
from labkit._sys.leftovers import inside

from . import capabilities, inroot, seccomp
from . import cgroups as cg
from . import network as net
from ._proc import alive as _alive
from ._proc import send_signal, starttime
from ._proc import wait_pid as _wait_pid
from ._spawner import Spawner
from .security import DEVICE_RULES, DEVICES, Profile
from .spec import ExecSpec, ProcessSpec, RunSpec
from .state import Bind, CgroupRef, ContainerState, check_name, is_id

if TYPE_CHECKING:
    from .tty import Pty  # imported where a terminal is made: a ``labkit run`` without -t needs none

__all__ = ["Runtime", "Container", "Bind", "ContainerState", "decode_status", "REGISTRY"]

REGISTRY = os.path.join(net.RUN_DIR, "containers")
#: compiled seccomp filters, one file per capability set (see :func:`_seccomp_filter`)
SECCOMP_CACHE = os.path.join(net.RUN_DIR, "seccomp")
FORKS = ("helper", "direct")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NETWORKS = ("none", "bridge", "host")
HOSTNAME_MAX = 64


def decode_status(status: int) -> tuple[int, int | None]:
    """Wait status -> (exit code, signal): a signal gives 128+signal, as shells and Docker report it.

    >>> decode_status(9), decode_status(3 << 8)
    ((137, 9), (3, None))
    """
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status), os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


def _table(rootfs: str, name: str) -> list[list[str]]:
    """Rows of the rootfs's ``/etc/<name>``, read without leaving the rootfs (symlinks are resolved
    inside it; a device, FIFO or huge file there is refused, never read)."""
    rfd = inroot.open_root(rootfs)
    try:
        data = inroot.read_file(rfd, f"/etc/{name}")
    except OSError as e:
        raise errors.InvalidArgument(f"/etc/{name} in {rootfs}", e.strerror or str(e),
                                     fix="make it a regular file or give a numeric uid:gid") from None
    finally:
        os.close(rfd)
    if data is None:
        return []
    return [ln.split(":") for ln in data.decode(errors="replace").splitlines() if ln.count(":") >= 2]


def _resolve_user(rootfs: str, user: str | int | None) -> tuple[int, int, str]:
    """``user`` (name, uid, ``uid:gid``, ``name:group``) -> (uid, gid, home) via the rootfs's /etc files."""
    if user is None or user == "":
        user = "0"
    u, _, g = str(user).partition(":")
    home = "/"
    if u.isdigit():
        uid = int(u)
        try:
            rows = _table(rootfs, "passwd")
        except errors.InvalidArgument:
            rows = []                      # a numeric uid needs no lookup: only HOME and gid come from there
        row = next((r for r in rows if r[2] == u), None)
        gid = int(row[3]) if row and row[3].isdigit() else uid
        home = row[5] if row and len(row) > 5 else "/"
    else:
        row = next((r for r in _table(rootfs, "passwd") if r[0] == u), None)
        if row is None:
            raise errors.NotFound(f"user {u!r} in {rootfs}/etc/passwd", fix="give a numeric uid:gid")
        if not (row[2].isdigit() and len(row) > 3 and row[3].isdigit()):
            raise errors.InvalidArgument(f"user {u!r} in {rootfs}/etc/passwd", "malformed line")
        uid, gid, home = int(row[2]), int(row[3]), row[5] if len(row) > 5 else "/"
    if g:
        if g.isdigit():
            gid = int(g)
        else:
            grow = next((r for r in _table(rootfs, "group") if r[0] == g), None)
            if grow is None or not grow[2].isdigit():
                raise errors.NotFound(f"group {g!r} in {rootfs}/etc/group", fix="give a numeric gid")
            gid = int(grow[2])
    return uid, gid, home


def _env(base: dict[str, str], extra: dict[str, str] | Sequence[str] | None) -> list[str]:
    env = dict(base)
    if isinstance(extra, dict):
        env.update({str(k): str(v) for k, v in extra.items()})
    elif extra:
        for e in extra:
            k, sep, v = e.partition("=")
            if not sep:
                raise errors.InvalidArgument(f"environment entry {e!r}", "expected KEY=VALUE")
            env[k] = v
    for k, v in env.items():
        if not k or "=" in k or "\0" in k + v:
            raise errors.InvalidArgument(f"environment entry {k!r}", "names must be non-empty, without '=' or NUL")
    return [f"{k}={v}" for k, v in env.items()]


_FILTERS: dict[frozenset[str], bytes] = {}


def _sha256() -> Any:
    """A new SHA-256 object from CPython's own implementation, which gives hashlib's digests without
    loading OpenSSL (hashlib's import: ~3-6 ms of every ``labkit run``; the standard library's ``random``
    does the same with ``_sha512``); hashlib's where it is missing."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]  # CPython 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]  # 3.12+
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment,unused-ignore]
    return sha256()


def _libseccomp_id() -> str:
    """Which libseccomp (and pyseccomp) would compile the filter, found without loading them (loading
    pyseccomp runs ldconfig: ~30 ms)."""
    # the Debian multiarch triplet (sysconfig's MULTIARCH) without loading sysconfig's data
    arch = getattr(sys.implementation, "_multiarch", "") or f"{os.uname().machine}-linux-gnu"
    ids = []
    for d in (f"/usr/lib/{arch}", f"/lib/{arch}", "/usr/lib64", "/lib64", "/usr/lib", "/lib"):
        try:
            real = os.path.realpath(os.path.join(d, "libseccomp.so.2"), strict=True)
            st = os.stat(real)
        except OSError:
            continue
        ids.append(f"{real}:{st.st_size}:{st.st_mtime_ns}")
        break
    for d in sys.path:
        try:
            st = os.stat(os.path.join(d or ".", "pyseccomp.py"))
        except OSError:
            continue
        ids.append(f"pyseccomp:{st.st_size}:{st.st_mtime_ns}")
        break
    return ";".join(ids)


def _filter_key(caps: frozenset[str]) -> str:
    """Names the filter: the profile's code and rules (seccomp.py itself), the capabilities, the
    architecture and the library that compiles it. Any change gives another file."""
    h = _sha256()
    with open(seccomp.__file__, "rb") as f:
        h.update(f.read())
    h.update(repr((sorted(caps), os.uname().machine, _libseccomp_id())).encode())
    return h.hexdigest()[:32]


def _cache_dir() -> str | None:
    """:data:`SECCOMP_CACHE`, made if missing; None unless it is a directory of ours that nobody else may
    write to (or read: a filter says what a container may call)."""
    try:
        os.makedirs(SECCOMP_CACHE, mode=0o700, exist_ok=True)
        st = os.lstat(SECCOMP_CACHE)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return None
    return SECCOMP_CACHE


def _seccomp_filter(caps: frozenset[str]) -> bytes:
    """:func:`seccomp.compile_bpf` for ``caps``, compiled once per capability set on this host: the BPF
    program is kept in :data:`SECCOMP_CACHE` (root's, mode 0700, on tmpfs), so a new process (every
    ``labkit run``) reads 1-2 KiB instead of compiling (~20 ms) after loading libseccomp (~30 ms). A file
    that is not a regular file of ours, writable by others, or not a whole number of BPF instructions
    is ignored and the filter compiled again."""
    bpf = _FILTERS.get(caps)
    if bpf is not None:
        return bpf
    d = _cache_dir()
    path = os.path.join(d, _filter_key(caps) + ".bpf") if d else None
    if path is not None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                st = os.fstat(fd)
                if (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077
                        and 0 < st.st_size <= 1 << 16 and st.st_size % 8 == 0):
                    data = os.read(fd, st.st_size + 1)
                    if len(data) == st.st_size:
                        bpf = data
            finally:
                os.close(fd)
    if bpf is None:
        bpf = seccomp.compile_bpf(caps)
        if path is not None:
            import tempfile
            try:
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".new-")
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(bpf)
                    os.replace(tmp, path)
                except BaseException:
                    _unlink(tmp)
                    raise
            except OSError:
                pass            # a cache that cannot be written costs a compile next time, nothing else
    _FILTERS[caps] = bpf
    return bpf


def _process(profile: Profile, *, cmd: Sequence[str], env: list[str], workdir: str, uid: int, gid: int,
             tty: bool = False) -> ProcessSpec:
    """The spawner's view of a process under ``profile`` (the seccomp filter compiled here, not there)."""
    return ProcessSpec(cmd=list(cmd), env=env, workdir=workdir, uid=uid, gid=gid, groups=[gid] if gid else [],
                       caps=capabilities.mask(profile.caps), privileged=profile.privileged,
                       no_new_privs=profile.no_new_privs,
                       seccomp=_seccomp_filter(frozenset(profile.caps)) if profile.seccomp else b"",
                       rlimits=[tuple(r) for r in profile.rlimits],  # type: ignore[misc]
                       tty_path="pty" if tty else None)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Container:
    """One container, backed by ``<state_dir>/<id>/state.json``; get it from :meth:`Runtime.run`,
    :meth:`Runtime.get` or :meth:`Runtime.list`. ``state`` is its :class:`ContainerState`.

    >>> c = rt.run(rootfs, ["sleep", "60"], detach=True)     # doctest: +SKIP
    >>> c.exec(["ps"])[0], c.stop(timeout=1), c.exit_code     # doctest: +SKIP
    (0, None, 137)
    """

    def __init__(self, runtime: Runtime, state: ContainerState, pty: Pty | None = None) -> None:
        self.runtime = runtime
        self.state = state
        #: the terminal of a ``tty=True`` container, in the process that started it (else ``None``)
        self.pty = pty

    # -- identity -------------------------------------------------------------------------------------
    id = property(lambda self: self.state.id)
    name = property(lambda self: self.state.name)
    pid = property(lambda self: self.state.pid, doc="host PID of the container's PID 1")
    ip = property(lambda self: self.state.ip, doc="address on the bridge (bridge network only)")
    dir = property(lambda self: self.runtime._dir(self.id))
    cgroup = property(lambda self: self.state.cgroup.open(self.id))

    def __repr__(self) -> str:
        return f"<Container {self.name} {self.id} {self.status}>"

    def _save(self) -> None:
        self.state.save(os.path.join(self.dir, "state.json"))

    # -- status ---------------------------------------------------------------------------------------
    def _exit_status(self) -> int | None:
        try:
            with open(os.path.join(self.dir, "exit")) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            return None

    @property
    def running(self) -> bool:
        """True while PID 1 lives (checked against its start time, so a reused PID does not count)."""
        if self._exit_status() is not None:
            return False
        return _alive(self.state.pid, self.state.pid_start)

    @property
    def status(self) -> str:
        """``running``, ``exited``, or ``lost`` (PID 1 and its shim died without recording a status)."""
        if self._exit_status() is not None:
            return "exited"
        return "running" if self.running else "lost"

    @property
    def exit_code(self) -> int | None:
        """Exit code once exited (128+N when killed by signal N), else ``None``."""
        st = self._exit_status()
        return None if st is None else decode_status(st)[0]

    @property
    def signal(self) -> int | None:
        """The signal that ended PID 1, if one did."""
        st = self._exit_status()
        return None if st is None else decode_status(st)[1]

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the container exits; return its exit code (``None`` if its shim was killed too).

        Raises ``TimeoutError`` when it still runs after ``timeout`` seconds.
        """
        if self._exit_status() is None:
            s = self.state
            shim_ok = _alive(s.shim, s.shim_start)
            pid = s.shim if shim_ok else (s.pid if self.running else None)
            if pid and not _wait_pid(pid, timeout):
                raise TimeoutError(f"container {self.name} still running after {timeout} s")
        return self.exit_code

    def logs(self) -> str:
        """Everything the container wrote to stdout and stderr so far (empty for a ``tty`` container:
        its output goes to the terminal)."""
        try:
            with open(os.path.join(self.dir, "log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- control --------------------------------------------------------------------------------------
    def kill(self, sig: int = SIGKILL) -> None:
        """Send ``sig`` to PID 1 (only delivered when PID 1 handles it, except SIGKILL/SIGSTOP), through
        a pidfd checked against PID 1's start time."""
        if self._exit_status() is None:
            send_signal(self.state.pid, self.state.pid_start, sig)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; release the network; return the exit code."""
        if self.running:
            if self.cgroup.frozen():
                self.cgroup.thaw()
            self.kill(SIGTERM)
            try:
                self.wait(timeout)
            except TimeoutError:
                self.kill(SIGKILL)
                self.wait(5)
        self._release_network()
        return self.exit_code

    def _release_network(self) -> None:
        s = self.state
        if s.network == "bridge" and not s.network_released:
            net.wait_gone(self.id)
            net.detach(self.id, s.bridge, s.ip)
            s.network_released = True
            self._save()

    def freeze(self, timeout: float = 5.0) -> None:
        """Freeze every process of the container (cgroup freezer), e.g. to commit its root consistently."""
        if not self.running:
            raise errors.FailedPrecondition(f"container {self.name}", "is not running")
        self.cgroup.freeze(timeout)

    def thaw(self) -> None:
        """Undo :meth:`freeze`."""
        self.cgroup.thaw()

    @contextmanager
    def paused(self, timeout: float = 5.0) -> Iterator[Container]:
        """Freeze for the duration of a ``with`` block, e.g. to commit the root filesystem consistently.

        >>> with c.paused():                                   # doctest: +SKIP
        ...     store.commit("web-v2", c.name)
        """
        self.freeze(timeout)
        try:
            yield self
        finally:
            self.thaw()

    def stats(self) -> dict[str, Any]:
        """Usage from the cgroup: memory (current, peak, limit), CPU time, pids, OOM kills, status."""
        out: dict[str, Any] = {"id": self.id, "name": self.name, "status": self.status}
        out.update(self.cgroup.stats())
        out["frozen"] = self.cgroup.frozen() if self.running else False
        return out

    def exec(self, cmd: Sequence[str], *, env: dict[str, str] | Sequence[str] | None = None,
             workdir: str | None = None, user: str | int | None = None, stdin: bytes | None = None,
             timeout: float | None = None, tty: bool = False, cap_add: Sequence[str] = (),
             cap_drop: Sequence[str] = (), privileged: bool = False) -> Any:
        """Run ``cmd`` inside the running container (all its namespaces, its cgroup); return
        ``(exit code, stdout+stderr)``, or with ``tty=True`` at once a :class:`~labkit.containers.tty.Pty`
        (its ``wait()`` gives the exit code).

        The process gets the container's security profile: its capabilities (``cap_add``/``cap_drop``
        change them relative to the container's set, ``privileged`` lifts every restriction for this
        process as ``docker exec --privileged`` does), ``no_new_privs``, the seccomp filter, rlimits.

        >>> c.exec(["hostname"])                 # doctest: +SKIP
        (0, 'box\\n')
        """
        if not self.running:
            raise errors.FailedPrecondition(f"container {self.name}", "is not running", fix="start a new one")
        if isinstance(cmd, str) or not cmd:
            raise errors.InvalidArgument(f"exec command {cmd!r}", "must be a non-empty list")
        if tty and stdin is not None:
            raise errors.InvalidArgument("exec stdin", "cannot be given with tty=True", fix="write to the Pty")
        s = self.state
        uid, gid = s.uid, s.gid
        if user is not None:
            uid, gid, _ = _resolve_user(s.rootfs, user)
        profile = s.profile
        if privileged or cap_add or cap_drop:
            profile = Profile.make(cap_add=cap_add, cap_drop=cap_drop, privileged=privileged or s.profile.privileged,
                                   base=s.profile.caps)
        base = os.path.join(self.dir, f"exec-{os.urandom(4).hex()}")
        spec = ExecSpec(process=_process(profile, cmd=cmd, env=_env(dict(e.split("=", 1) for e in s.env), env),
                                         workdir=workdir or s.workdir, uid=uid, gid=gid, tty=tty),
                        pid=s.pid, output=base + ".out", status=base + ".status",  # type: ignore[arg-type]
                        procs_files=self.cgroup.procs_files())
        if stdin is not None:
            with open(base + ".in", "wb") as f:
                f.write(stdin)
            spec = spec._replace(stdin=base + ".in")
        master = None
        done = False
        try:
            if tty:
                master, slave = os.openpty()
                try:
                    reply = self.runtime._spawner.request({"op": "exec", "spec": spec.to_json(), "fds": ["tty"]},
                                                          [slave])
                finally:
                    os.close(slave)
            else:
                reply = self.runtime._spawner.request({"op": "exec", "spec": spec.to_json()})
            if not reply["ok"]:
                raise _start_error(f"exec in container {self.name}", reply["error"])
            if tty:
                from .tty import Pty
                assert master is not None
                shim = reply["shim"]
                pty = Pty(master, lambda t=None: self._exec_result(shim, base, t, cmd)[0])   # type: ignore[misc]
                master = None
                done = True
                return pty
            return self._exec_result(reply["shim"], base, timeout, cmd)
        finally:
            if master is not None:
                os.close(master)
            if not done:
                for ext in (".out", ".status", ".in"):
                    _unlink(base + ext)

    def _exec_result(self, shim: int, base: str, timeout: float | None, cmd: Sequence[str]) -> tuple[int, str]:
        if not _wait_pid(shim, timeout):
            raise TimeoutError(f"exec {cmd[0]} in container {self.name} still running after {timeout} s")
        try:
            with open(base + ".status") as f:
                code = decode_status(int(f.read() or "0"))[0]
            with open(base + ".out", errors="replace") as f:
                return code, f.read()
        finally:
            for ext in (".out", ".status", ".in"):
                _unlink(base + ext)

    def remove(self, *, force: bool = False) -> None:
        """Delete the container: its cgroup, network, state directory. A running one needs ``force``
        (which kills it first)."""
        if self.running:
            if not force:
                raise errors.FailedPrecondition(f"container {self.name}", "is running",
                                                fix="stop it first or remove(force=True)")
            self.stop(timeout=0)
        self._release_network()
        self.cgroup.remove()       # the labkit/ parents stay for the next run until Runtime.close()
        _unlink(_registry_path(self.id))
        self.runtime._remove_dir(self.id)
        pty = self.runtime._ptys.pop(self.id, None) or self.pty
        if pty is not None:
            pty.close()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove(force=True)


def _registry_path(cid: str) -> str:
    if not is_id(cid):
        raise errors.InvalidArgument(f"container id {cid!r}", "is not a labkit container id")
    return os.path.join(REGISTRY, cid)


def _start_error(what: str, msg: str) -> errors.LabkitError:
    step, _, detail = msg.partition(": ")
    if step == "exec":
        return errors.InvalidArgument(what, f"cannot exec the command: {detail}",
                                      fix="check that it exists in the root filesystem and is executable")
    return errors.FailedPrecondition(what, f"set-up step {step!r} failed: {detail}")


class Runtime:
    """Runs containers whose state lives in ``state_dir``; one small spawner process per Runtime.

    ``bridge`` configures the ``bridge`` network (name, subnet, NAT); ``layout`` overrides the detected
    cgroup layout (tests use it to run on the v2 tree of a hybrid host). ``fork``: who forks the
    containers - ``helper`` (default), a small helper process started on first use (or by
    :meth:`prestart`), so a big caller such as a notebook kernel never forks itself; ``direct``, this
    process, for a small one-shot caller such as the ``labkit`` command (no second interpreter to start:
    ~40-100 ms, against a fork of a small process: 1-2 ms).

    >>> rt = Runtime("/var/lib/labkit/containers")                  # doctest: +SKIP
    >>> c = rt.run("/rootfs", ["echo", "hi"]); c.logs()             # doctest: +SKIP
    'hi\\n'
    >>> [p["name"] for p in rt.ps()]                                # doctest: +SKIP
    ['c0ffee1234']
    """

    def __init__(self, state_dir: str, *, bridge: net.BridgeConfig | None = None,
                 layout: cg.Layout | None = None, fork: str = "helper") -> None:
        if os.geteuid() != 0:
            raise errors.Unsupported("container runtime", "needs root (namespaces, mounts, cgroups)",
                                     fix="run as root, in a VM")
        if fork not in FORKS:
            raise errors.InvalidArgument(f"fork={fork!r}", f"must be one of {', '.join(FORKS)}")
        self.state_dir = os.path.realpath(state_dir)
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.bridge = bridge or net.BridgeConfig()
        self.layout = layout or cg.detect()
        self._spawner = Spawner(direct=fork == "direct")
        self._ptys: dict[str, Pty] = {}      # terminals of the tty containers this Runtime started

    def prestart(self) -> None:
        """Start the helper process now, without waiting: its start-up (a Python interpreter) then overlaps
        with the caller's own work, e.g. preparing and mounting the root filesystem (``run`` starts it
        anyway, first thing). A no-op with ``fork="direct"`` or when it runs."""
        self._spawner.start()

    # -- paths ----------------------------------------------------------------------------------------
    def _dir(self, cid: str) -> str:
        """``<state_dir>/<cid>``, checked: a well-formed id, and a path that stays inside the state dir."""
        if not is_id(cid):
            raise errors.InvalidArgument(f"container id {cid!r}", "is not a labkit container id")
        d = os.path.join(self.state_dir, cid)
        if not inside(d, self.state_dir):
            raise errors.InvalidArgument(f"container directory {d}", f"is outside {self.state_dir}")
        return d

    def _remove_dir(self, cid: str) -> None:
        d = self._dir(cid)
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):                    # never follow a symlink planted there
            shutil.rmtree(d, ignore_errors=True)
        else:
            _unlink(d)

    # -- lookup ---------------------------------------------------------------------------------------
    def _states(self) -> Iterable[ContainerState]:
        for cid in sorted(os.listdir(self.state_dir)):
            if not is_id(cid):
                continue
            try:
                yield ContainerState.load(os.path.join(self._dir(cid), "state.json"))
            except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue

    def list(self) -> list[Container]:
        """Every container in the state directory, running or not."""
        return [Container(self, s, self._ptys.get(s.id)) for s in self._states() if s.id and is_id(s.id)]

    def ps(self) -> builtins.list[dict[str, Any]]:      # (``list`` is the method above, in this class)
        """``docker ps -a`` as rows (for a DataFrame): id, name, status, exit code, pid, ip, network,
        command, privileged."""
        return [{"id": c.id, "name": c.name, "status": c.status, "exit_code": c.exit_code, "pid": c.pid,
                 "ip": c.ip, "network": c.state.network, "command": " ".join(c.state.cmd),
                 "privileged": c.state.profile.privileged}
                for c in self.list()]

    def get(self, name_or_id: str) -> Container:
        """The container with this name or id (or unique id prefix)."""
        check_name(name_or_id)
        found = [c for c in self.list() if c.name == name_or_id or c.id == name_or_id]
        if not found:
            found = [c for c in self.list() if c.id.startswith(name_or_id)]
        if len(found) != 1:
            raise errors.NotFound(f"container {name_or_id!r}", fix="list them with Runtime.ps()")
        return found[0]

    # -- run ------------------------------------------------------------------------------------------
    def run(self, rootfs: str, cmd: Sequence[str], *, name: str | None = None,
            env: dict[str, str] | Sequence[str] | None = None, workdir: str = "/",
            user: str | int | None = None, hostname: str | None = None, network: str = "none",
            memory: int | None = None, cpus: float | None = None, pids: int | None = None,
            readonly: bool = False, binds: Sequence[str | tuple | Bind] = (), detach: bool = False,
            stdin: bytes | bool | None = None, tty: bool = False, cap_add: Sequence[str] = (),
            cap_drop: Sequence[str] = (), privileged: bool = False) -> Container:
        """Run ``cmd`` in a new container rooted at ``rootfs``; wait for it unless ``detach`` or ``tty``.

        Parameters: ``name`` (``[a-zA-Z0-9][a-zA-Z0-9_.-]*``, at most 128 characters; default: the id;
        also the hostname unless ``hostname`` or longer than 64), ``env`` (added to PATH/HOME/HOSTNAME),
        ``workdir``, ``user`` (``name``, ``uid`` or ``uid:gid`` from the rootfs's /etc/passwd),
        ``network`` (``none`` | ``bridge`` | ``host``), ``memory`` (bytes), ``cpus`` (0.5 = half a CPU),
        ``pids`` (max processes), ``readonly`` root, ``binds`` (``"src:dst[:ro]"``), ``stdin`` (bytes
        fed to the command; default /dev/null).

        Security (docs/security.md): Docker's default profile - 14 capabilities, changed with
        ``cap_add``/``cap_drop`` (names with or without ``CAP_``, or ``"ALL"``), ``no_new_privs``, a
        seccomp filter, masked and read-only /proc and /sys paths, a device allowlist, rlimits.
        ``privileged=True`` turns all of that off (every capability, no seccomp, every device).

        ``tty=True``: the command runs on a pseudo-terminal (as its session leader) and ``run`` returns
        at once; talk to ``container.pty`` (:class:`~labkit.containers.tty.Pty`: ``read``, ``write``,
        ``attach()`` your terminal), then ``wait()``. ``stdin=True`` is accepted with it (the terminal
        is the input).

        If any set-up step fails, what was made (network, cgroup, state) is removed and one error is
        raised: ``InvalidArgument`` for a command that cannot be executed, ``FailedPrecondition`` else.

        >>> rt.run("/rootfs", ["sh", "-c", "exit 3"]).exit_code     # doctest: +SKIP
        3
        """
        self._spawner.start()                # overlaps its start-up with the checks and set-up below
        rootfs = os.path.realpath(rootfs)
        if not os.path.isdir(rootfs):
            raise errors.NotFound(f"root filesystem {rootfs}", fix="mount or build it first")
        if isinstance(cmd, str) or not cmd:
            raise errors.InvalidArgument(f"command {cmd!r}", "must be a non-empty list", fix='e.g. ["sh", "-c", "..."]')
        if network not in NETWORKS:
            raise errors.InvalidArgument(f"network {network!r}", f"must be one of {', '.join(NETWORKS)}")
        for v, what in ((memory, "memory"), (cpus, "cpus"), (pids, "pids")):
            if v is not None and v <= 0:
                raise errors.InvalidArgument(f"{what} limit {v}", "must be positive")
        if stdin is True and not tty:
            raise errors.InvalidArgument("stdin=True", "an attached stdin needs tty=True", fix="give bytes instead")
        if tty and stdin not in (None, True):
            raise errors.InvalidArgument("stdin bytes", "cannot be given with tty=True", fix="write to container.pty")
        cid = os.urandom(5).hex()
        name = check_name(name) if name is not None else cid
        if name != cid and any(c.name == name for c in self.list()):   # a fresh id is unique: skip the scan
            raise errors.AlreadyExists(f"container {name!r}", fix="pick another name or remove the old one")
        if hostname is None:
            hostname = name if len(name) <= HOSTNAME_MAX else cid
        if len(hostname.encode()) > HOSTNAME_MAX or not hostname or "\0" in hostname or "/" in hostname:
            raise errors.InvalidArgument(f"hostname {hostname!r}",
                                         f"must be 1 to {HOSTNAME_MAX} bytes, without / or NUL")
        bind_list = [Bind.parse(b) for b in binds]
        profile = Profile.make(cap_add=cap_add, cap_drop=cap_drop, privileged=privileged)
        uid, gid, home = _resolve_user(rootfs, user)
        envl = _env({"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": home} | ({"TERM": "xterm"} if tty else {}),
                    env)
        process = _process(profile, cmd=cmd, env=envl, workdir=workdir, uid=uid, gid=gid, tty=tty)

        d = self._dir(cid)
        cgroup = self.layout.cgroup(cid)
        limits = cg.Limits(memory=memory, cpus=cpus, pids=pids,
                           devices=None if profile.privileged else DEVICE_RULES)
        state = ContainerState(
            id=cid, name=name, rootfs=rootfs, cmd=list(cmd), env=envl, workdir=workdir, uid=uid, gid=gid,
            hostname=hostname, network=network, readonly=readonly, binds=bind_list, created=time.time(),
            limits=limits, cgroup=CgroupRef.of(cgroup), bridge=self.bridge, profile=profile, tty=tty)
        spec = RunSpec(process=process, rootfs=rootfs, hostname=hostname, network=network,
                       log=os.path.join(d, "log"), exit=os.path.join(d, "exit"),
                       procs_files=cgroup.procs_files(), readonly=readonly,
                       binds=[(b.source, b.target, b.ro) for b in bind_list], devices=dict(DEVICES),
                       masked_paths=list(profile.masked_paths), readonly_paths=list(profile.readonly_paths))
        pty: Pty | None = None
        with ExitStack() as undo:                 # everything made is unmade if a later step fails
            os.mkdir(d, 0o700)
            undo.callback(self._remove_dir, cid)
            state.save(os.path.join(d, "state.json"))
            os.makedirs(REGISTRY, exist_ok=True)
            with open(_registry_path(cid), "w") as f:
                f.write(self.state_dir)
            undo.callback(_unlink, _registry_path(cid))
            cgroup.create(limits)
            undo.callback(cgroup.remove)
            req: dict[str, Any] = {"op": "run", "fds": []}
            fds: list[int] = []
            if network == "bridge":
                att = net.attach(cid, self.bridge)
                undo.callback(net.detach, cid, self.bridge, att.ip)
                undo.callback(net.wait_gone, cid)
                state.ip = att.ip
                req["fds"].append("netns")
                fds.append(att.netns_fd)
            if isinstance(stdin, bytes):
                with open(os.path.join(d, "stdin"), "wb") as f:
                    f.write(stdin)
                spec = spec._replace(stdin=os.path.join(d, "stdin"))
            if tty:
                from .tty import Pty
                master, slave = os.openpty()
                pty = Pty(master, lambda t=None: c.wait(t))  # type: ignore[has-type,misc]  # (c: below)
                undo.callback(pty.close)
                req["fds"].append("tty")
                fds.append(slave)
            req["spec"] = spec.to_json()
            try:
                reply = self._spawner.request(req, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            if not reply["ok"]:
                if reply.get("shim"):
                    _wait_pid(reply["shim"], 5)   # let the shim finish before its directory goes
                raise _start_error(f"container {name}", reply["error"])
            state.shim, state.shim_start = reply["shim"], starttime(reply["shim"])
            state.pid, state.pid_start = reply["pid"], starttime(reply["pid"])
            state.started = time.time()
            if state.pid_start is None:          # already gone: /bin/true is that fast
                state.pid_start = -1
            state.save(os.path.join(d, "state.json"))
            undo.pop_all()
        c = Container(self, state, pty)
        if pty is not None:
            self._ptys[cid] = pty
        if not detach and not tty:
            c.wait()
        return c

    def close(self) -> None:
        """Stop the spawner and remove the ``labkit`` cgroup parents if no container uses them (they are
        kept between runs: making and removing them each time costs ~2 ms a container); containers keep
        running and stay listed."""
        self._spawner.close()
        cg.remove_parent_if_empty(self.layout.cgroup("x"))

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
