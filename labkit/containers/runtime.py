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

import json
import os
import secrets
import select
import shutil
from signal import SIGKILL, SIGTERM
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from labkit import errors

from . import cgroups as cg
from . import network as net
from ._spawner import Spawner

REGISTRY = os.path.join(net.RUN_DIR, "containers")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NETWORKS = ("none", "bridge", "host")


@dataclass(frozen=True)
class Bind:
    """A bind mount: host path -> container path, read-only when ``ro``."""

    source: str
    target: str
    ro: bool = False

    @classmethod
    def parse(cls, spec: str | tuple[str, str] | tuple[str, str, bool] | Bind) -> Bind:
        """Accept ``Bind``, ``(src, dst[, ro])`` or docker's ``"src:dst[:ro]"``.

        >>> Bind.parse("/tmp:/data:ro")
        Bind(source='/tmp', target='/data', ro=True)
        """
        if isinstance(spec, Bind):
            b = spec
        elif isinstance(spec, str):
            parts = spec.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise errors.InvalidArgument(f"bind {spec!r}", "expected HOST:CONTAINER[:ro]")
            b = cls(parts[0], parts[1], len(parts) == 3 and parts[2] == "ro")
        else:
            b = cls(spec[0], spec[1], bool(spec[2]) if len(spec) > 2 else False)  # type: ignore[misc]
        if not os.path.isabs(b.source) or not os.path.isabs(b.target):
            raise errors.InvalidArgument(f"bind {b.source}:{b.target}", "both paths must be absolute")
        if not os.path.exists(b.source):
            raise errors.NotFound(f"bind source {b.source}", fix="create it first")
        return b


def _starttime(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in ticks), which tells a process from a later one with its
    pid; ``None`` when the process is gone or a zombie (dead, only not yet reaped by its new parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int | None, start: int | None) -> bool:
    return bool(pid) and start is not None and _starttime(pid) == start  # type: ignore[arg-type]


def decode_status(status: int) -> tuple[int, int | None]:
    """Wait status -> (exit code, signal): a signal gives 128+signal, as shells and Docker report it.

    >>> decode_status(9), decode_status(3 << 8)
    ((137, 9), (3, None))
    """
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status), os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


def _resolve_user(rootfs: str, user: str | int | None) -> tuple[int, int, str]:
    """``user`` (name, uid, ``uid:gid``, ``name:group``) -> (uid, gid, home) via the rootfs's /etc files."""
    if user is None or user == "":
        user = "0"
    u, _, g = str(user).partition(":")

    def table(name: str) -> list[list[str]]:
        try:
            with open(os.path.join(rootfs, "etc", name)) as f:
                return [ln.rstrip("\n").split(":") for ln in f if ln.count(":") >= 2]
        except FileNotFoundError:
            return []
    passwd = table("passwd")
    home = "/"
    if u.isdigit():
        uid = int(u)
        row = next((r for r in passwd if r[2] == u), None)
        gid = int(row[3]) if row else uid
        home = row[5] if row and len(row) > 5 else "/"
    else:
        row = next((r for r in passwd if r[0] == u), None)
        if row is None:
            raise errors.NotFound(f"user {u!r} in {rootfs}/etc/passwd", fix="give a numeric uid:gid")
        uid, gid, home = int(row[2]), int(row[3]), row[5] if len(row) > 5 else "/"
    if g:
        if g.isdigit():
            gid = int(g)
        else:
            grow = next((r for r in table("group") if r[0] == g), None)
            if grow is None:
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
    return [f"{k}={v}" for k, v in env.items()]


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _cgroup_from(state: dict[str, Any]) -> cg.Cgroup:
    c = state["cgroup"]
    if c["version"] == 2:
        return cg.CgroupV2(state["id"], c["root"])
    return cg.CgroupV1(state["id"], c["mounts"])


def _cgroup_state(cgroup: cg.Cgroup) -> dict[str, Any]:
    if isinstance(cgroup, cg.CgroupV2):
        return {"version": 2, "root": cgroup.root, "name": cgroup.name}
    return {"version": 1, "mounts": cgroup.mounts, "name": cgroup.name}


def _wait_pid(pid: int, timeout: float | None) -> bool:
    """Wait (with a pidfd, no polling) until ``pid`` exits; False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(None if timeout is None else max(0, int(timeout * 1000))))
    finally:
        os.close(fd)


class Container:
    """One container, backed by ``<state_dir>/<id>/state.json``; get it from :meth:`Runtime.run`,
    :meth:`Runtime.get` or :meth:`Runtime.list`.

    >>> c = rt.run(rootfs, ["sleep", "60"], detach=True)     # doctest: +SKIP
    >>> c.exec(["ps"])[0], c.stop(timeout=1), c.exit_code     # doctest: +SKIP
    (0, None, 137)
    """

    def __init__(self, runtime: Runtime, state: dict[str, Any]) -> None:
        self.runtime = runtime
        self.state = state

    # -- identity -------------------------------------------------------------------------------------
    id = property(lambda self: self.state["id"])
    name = property(lambda self: self.state["name"])
    pid = property(lambda self: self.state.get("pid"), doc="host PID of the container's PID 1")
    ip = property(lambda self: self.state.get("ip"), doc="address on the bridge (bridge network only)")
    dir = property(lambda self: os.path.join(self.runtime.state_dir, self.id))
    cgroup = property(lambda self: _cgroup_from(self.state))

    def __repr__(self) -> str:
        return f"<Container {self.name} {self.id} {self.status}>"

    def _save(self) -> None:
        _write_json(os.path.join(self.dir, "state.json"), self.state)

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
        return _alive(self.state.get("pid"), self.state.get("pid_start"))

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
            shim_ok = _alive(self.state.get("shim"), self.state.get("shim_start"))
            pid = self.state["shim"] if shim_ok else (self.pid if self.running else None)
            if pid and not _wait_pid(pid, timeout):
                raise TimeoutError(f"container {self.name} still running after {timeout} s")
        return self.exit_code

    def logs(self) -> str:
        """Everything the container wrote to stdout and stderr so far."""
        try:
            with open(os.path.join(self.dir, "log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- control --------------------------------------------------------------------------------------
    def kill(self, sig: int = SIGKILL) -> None:
        """Send ``sig`` to PID 1 (only delivered when PID 1 handles it, except SIGKILL/SIGSTOP)."""
        if self.running:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

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
        if self.state.get("network") == "bridge" and not self.state.get("network_released"):
            net.wait_gone(self.id)
            net.detach(self.id, net.BridgeConfig(**self.state["bridge"]), self.state.get("ip"))
            self.state["network_released"] = True
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
             timeout: float | None = None) -> tuple[int, str]:
        """Run ``cmd`` inside the running container (all its namespaces, its cgroup); return
        ``(exit code, stdout+stderr)``.

        >>> c.exec(["hostname"])                 # doctest: +SKIP
        (0, 'box\\n')
        """
        if not self.running:
            raise errors.FailedPrecondition(f"container {self.name}", "is not running", fix="start a new one")
        if not cmd:
            raise errors.InvalidArgument("exec command", "is empty")
        s = self.state
        uid, gid = s["uid"], s["gid"]
        if user is not None:
            uid, gid, _ = _resolve_user(s["rootfs"], user)
        tag = secrets.token_hex(4)
        base = os.path.join(self.dir, f"exec-{tag}")
        req: dict[str, Any] = {"op": "exec", "pid": self.pid, "cmd": list(cmd), "uid": uid, "gid": gid,
                               "groups": [gid] if gid else [], "procs_files": self.cgroup.procs_files(),
                               "env": _env(dict(e.split("=", 1) for e in s["env"]), env),
                               "workdir": workdir or s["workdir"], "output": base + ".out",
                               "status": base + ".status"}
        if stdin is not None:
            with open(base + ".in", "wb") as f:
                f.write(stdin)
            req["stdin"] = base + ".in"
        try:
            reply = self.runtime._spawner.request(req)
            if not reply["ok"]:
                raise _start_error(f"exec in container {self.name}", reply["error"])
            if not _wait_pid(reply["shim"], timeout):
                raise TimeoutError(f"exec {cmd[0]} in container {self.name} still running after {timeout} s")
            with open(base + ".status") as f:
                code = decode_status(int(f.read() or "0"))[0]
            with open(base + ".out", errors="replace") as f:
                return code, f.read()
        finally:
            for ext in (".out", ".status", ".in"):
                try:
                    os.unlink(base + ext)
                except FileNotFoundError:
                    pass

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
        try:
            os.unlink(os.path.join(REGISTRY, self.id))
        except FileNotFoundError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove(force=True)


def _start_error(what: str, msg: str) -> errors.LabkitError:
    step, _, detail = msg.partition(": ")
    if step == "exec":
        return errors.InvalidArgument(what, f"cannot exec the command: {detail}",
                                      fix="check that it exists in the root filesystem and is executable")
    return errors.FailedPrecondition(what, f"set-up step {step!r} failed: {detail}")


class Runtime:
    """Runs containers whose state lives in ``state_dir``; one small spawner process per Runtime.

    ``bridge`` configures the ``bridge`` network (name, subnet, NAT); ``layout`` overrides the detected
    cgroup layout (tests use it to run on the v2 tree of a hybrid host).

    >>> rt = Runtime("/var/lib/labkit/containers")                  # doctest: +SKIP
    >>> c = rt.run("/rootfs", ["echo", "hi"]); c.logs()             # doctest: +SKIP
    'hi\\n'
    >>> [p["name"] for p in rt.ps()]                                # doctest: +SKIP
    ['c0ffee1234']
    """

    def __init__(self, state_dir: str, *, bridge: net.BridgeConfig | None = None,
                 layout: cg.Layout | None = None) -> None:
        if os.geteuid() != 0:
            raise errors.Unsupported("container runtime", "needs root (namespaces, mounts, cgroups)",
                                     fix="run as root, in a VM")
        self.state_dir = os.path.realpath(state_dir)
        os.makedirs(self.state_dir, exist_ok=True)
        self.bridge = bridge or net.BridgeConfig()
        self.layout = layout or cg.detect()
        self._spawner = Spawner()

    # -- lookup ---------------------------------------------------------------------------------------
    def _states(self) -> Iterable[dict[str, Any]]:
        for cid in sorted(os.listdir(self.state_dir)):
            try:
                with open(os.path.join(self.state_dir, cid, "state.json")) as f:
                    yield json.load(f)
            except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
                continue

    def list(self) -> list[Container]:
        """Every container in the state directory, running or not."""
        return [Container(self, s) for s in self._states()]

    def ps(self) -> list[dict[str, Any]]:
        """``docker ps -a`` as rows: id, name, status, exit code, pid, ip, network, command."""
        return [{"id": c.id, "name": c.name, "status": c.status, "exit_code": c.exit_code, "pid": c.pid,
                 "ip": c.ip, "network": c.state["network"], "command": " ".join(c.state["cmd"])}
                for c in self.list()]

    def get(self, name_or_id: str) -> Container:
        """The container with this name or id (or unique id prefix)."""
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
            stdin: bytes | None = None) -> Container:
        """Run ``cmd`` in a new container rooted at ``rootfs``; wait for it unless ``detach``.

        Parameters: ``name`` (default: the id; also the hostname unless ``hostname``), ``env`` (added to
        PATH/HOME/HOSTNAME), ``workdir``, ``user`` (``name``, ``uid`` or ``uid:gid`` from the rootfs's
        /etc/passwd), ``network`` (``none`` | ``bridge`` | ``host``), ``memory`` (bytes), ``cpus``
        (0.5 = half a CPU), ``pids`` (max processes), ``readonly`` root, ``binds`` (``"src:dst[:ro]"``),
        ``stdin`` (bytes fed to the command; default /dev/null).

        If any set-up step fails, what was made (network, cgroup, state) is removed and one error is
        raised: ``InvalidArgument`` for a command that cannot be executed, ``FailedPrecondition`` else.

        >>> rt.run("/rootfs", ["sh", "-c", "exit 3"]).exit_code     # doctest: +SKIP
        3
        """
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
        cid = secrets.token_hex(5)
        name = name or cid
        if name != cid and any(c.name == name for c in self.list()):   # a fresh id is unique: skip the scan
            raise errors.AlreadyExists(f"container {name!r}", fix="pick another name or remove the old one")
        hostname = hostname or name
        if len(hostname.encode()) > 64:
            raise errors.InvalidArgument(f"hostname {hostname!r}", "longer than 64 bytes")
        bind_list = [Bind.parse(b) for b in binds]
        uid, gid, home = _resolve_user(rootfs, user)
        envl = _env({"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": home}, env)

        d = os.path.join(self.state_dir, cid)
        os.makedirs(d)
        cgroup = self.layout.cgroup(cid)
        state: dict[str, Any] = {
            "id": cid, "name": name, "rootfs": rootfs, "cmd": list(cmd), "env": envl, "workdir": workdir,
            "uid": uid, "gid": gid, "hostname": hostname, "network": network, "readonly": readonly,
            "binds": [[b.source, b.target, b.ro] for b in bind_list], "created": time.time(),
            "limits": {"memory": memory, "cpus": cpus, "pids": pids}, "cgroup": _cgroup_state(cgroup),
            "bridge": {"name": self.bridge.name, "subnet": self.bridge.subnet, "nat": self.bridge.nat}}
        att: net.Attachment | None = None
        made_cgroup = False
        try:
            _write_json(os.path.join(d, "state.json"), state)
            os.makedirs(REGISTRY, exist_ok=True)
            with open(os.path.join(REGISTRY, cid), "w") as f:
                f.write(self.state_dir)
            cgroup.create(cg.Limits(memory=memory, cpus=cpus, pids=pids))
            made_cgroup = True
            if network == "bridge":
                att = net.attach(cid, self.bridge)
                state["ip"] = att.ip
            req = {"op": "run", "rootfs": rootfs, "cmd": list(cmd), "env": envl, "workdir": workdir,
                   "uid": uid, "gid": gid, "groups": [gid] if gid else [], "hostname": hostname,
                   "network": network, "readonly": readonly, "binds": state["binds"],
                   "procs_files": cgroup.procs_files(), "log": os.path.join(d, "log"),
                   "exit": os.path.join(d, "exit")}
            if stdin is not None:
                with open(os.path.join(d, "stdin"), "wb") as f:
                    f.write(stdin)
                req["stdin"] = os.path.join(d, "stdin")
            try:
                reply = self._spawner.request(req, [att.netns_fd] if att else None)
            finally:
                if att:
                    os.close(att.netns_fd)
            if not reply["ok"]:
                if reply.get("shim"):
                    _wait_pid(reply["shim"], 5)   # let the shim finish before its directory goes
                raise _start_error(f"container {name}", reply["error"])
            state.update(shim=reply["shim"], shim_start=_starttime(reply["shim"]), pid=reply["pid"],
                         pid_start=_starttime(reply["pid"]), started=time.time())
            if state["pid_start"] is None:       # already gone: /bin/true is that fast
                state["pid_start"] = -1
            _write_json(os.path.join(d, "state.json"), state)
        except BaseException:
            if att:
                net.wait_gone(cid)
                net.detach(cid, self.bridge, att.ip)
            if made_cgroup:
                cgroup.remove()
            try:
                os.unlink(os.path.join(REGISTRY, cid))
            except FileNotFoundError:
                pass
            shutil.rmtree(d, ignore_errors=True)
            raise
        c = Container(self, state)
        if not detach:
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
