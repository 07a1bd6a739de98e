"""``Lab``: one facade over a snapshot backend, the image store and the container runtime — what notebooks use.

The column's workflow (figure 2): a base image, a container on a thin snapshot of it, an application
installed inside, the container committed as a new image, the new image run anywhere.

>>> from labkit import Lab
>>> lab = Lab()                                                          # doctest: +SKIP
>>> lab.import_image("busybox", tag="busybox")                           # doctest: +SKIP
>>> c = lab.run("busybox", ["sh", "-c", "echo hi > /hello"])             # doctest: +SKIP
>>> lab.commit(c, "hello:v1"); c.remove()                                # doctest: +SKIP
>>> lab.run("hello:v1", ["cat", "/hello"], rm=True).output               # doctest: +SKIP
'hi\\n'

Layout under ``root``: ``snapshots/<backend>/`` (the snapshotter), ``images/<backend>/`` (image
metadata), ``containers/`` (runtime state), ``rootfs/<key>/`` (where containers' snapshots are mounted).
A container's snapshot is ``ctr-<name>``, labelled ``labkit.container=<name>``.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import errors
from ._sys import mounts, record
from ._sys.leftovers import inside
from .config import default_root
from .containers.runtime import Runtime
from .images.store import ImageStore
from .snapshots import BaseSnapshotter, default_backend, open_snapshotter
from .snapshots.base import EPHEMERAL
from .snapshots.capabilities import PoolBacked
from .snapshots.mount import Mounted, unmount
from .units import parse_size

# Only what ``labkit run`` uses is imported here: ``gc`` (which loads every backend's collector, the thin
# pool's among them), the published-port proxy, and the image store's recipes, exports and reports are
# imported by the methods that use them (tests/test_imports.py pins what a ``labkit run`` loads).
if TYPE_CHECKING:
    import pandas as pd

    from .containers.proxy import Publish
    from .images.reports import BuildResult, SaveReport

#: Docker's container name rule
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
#: a file at the top of every Lab store: ``labkit gc`` refuses a root without one
STORE_MARKER = ".labkit-store"


def check_name(name: str) -> str:
    """A container name as Docker allows it: ``[a-zA-Z0-9][a-zA-Z0-9_.-]*``, at most 128 characters.

    >>> check_name("web-1")
    'web-1'
    >>> check_name("x/../../victim")     # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    labkit.errors.InvalidArgument: container name 'x/../../victim' is not allowed: ...
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise errors.InvalidArgument(f"container name {name!r}", "is not allowed",
                                     fix="use letters, digits and _ . - (first a letter or digit), at most 128")
    return name


def _records(rows: Any) -> list[dict[str, Any]]:
    return [_plain(r) if record.is_structured(r) else dict(r) for r in rows]


def _frame(rows: Any, columns: list[str] | None = None, *, as_frame: bool = True) -> Any:
    """A DataFrame from a list of records, dataclasses or dicts, ``created`` as UTC timestamps (pandas is imported
    only here); with ``as_frame=False`` the plain list of dicts (the CLI: no pandas on its fast paths)."""
    recs = _records(rows)
    if not as_frame:
        return recs
    import pandas as pd
    df = pd.DataFrame(recs, columns=columns) if columns or not recs else pd.DataFrame(recs)
    if "created" in df.columns and len(df) and df["created"].dtype.kind in "fi":
        df["created"] = pd.to_datetime(df["created"], unit="s", utc=True)
    return df


def _human_size(n: int) -> str:
    """Decimal units as Docker prints them (``2.0 MB``)."""
    v = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(v) < 1000 or unit == "GB":
            return f"{int(v)} B" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return f"{v:.1f} TB"


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _plain(x: Any) -> Any:
    return record.asdict(x) if record.is_structured(x) else x



class LabContainer:
    """A container started by :meth:`Lab.run`: its runtime record plus its snapshot."""

    def __init__(self, lab: Lab, name: str, image: str, cmd: Sequence[str], rm: bool) -> None:
        self.lab, self.name, self.image, self.cmd, self.rm = lab, name, image, list(cmd), rm
        self.key = f"ctr-{name}"
        self._output: str | None = None

    @property
    def runtime(self) -> Any:
        """The runtime's :class:`labkit.containers.Container` (None once removed)."""
        try:
            return self.lab.runtime.get(self.name)
        except errors.NotFound:
            return None

    @property
    def exit_code(self) -> int | None:
        c = self.runtime
        return c.exit_code if c is not None else self._exit

    _exit: int | None = None

    @property
    def output(self) -> str:
        """stdout and stderr so far (kept after removal)."""
        c = self.runtime
        return c.logs() if c is not None else (self._output or "")

    @property
    def status(self) -> str:
        c = self.runtime
        return c.status if c is not None else "removed"

    def _live(self) -> Any:
        c = self.runtime
        if c is None:
            raise errors.NotFound(f"container {self.name!r}", "was removed",
                                  fix="start a new one with run(); `labkit ps -a` lists what exists")
        return c

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the container to exit; its exit code (None on timeout)."""
        return self._live().wait(timeout)

    def exec(self, cmd: Sequence[str], **kw: Any) -> tuple[int, str]:
        """Run ``cmd`` inside the running container; returns (exit code, output)."""
        return self._live().exec(cmd, **kw)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; a ``rm`` container is removed afterwards."""
        code = self._live().stop(timeout)
        if self.rm:
            self.remove()
        return code

    def commit(self, tag: str | None = None, *, comment: str = "") -> str:
        """Commit this container as a new image (see :meth:`Lab.commit`)."""
        return self.lab.commit(self, tag, comment=comment)

    def remove(self, *, force: bool = False) -> None:
        """Remove the runtime record, unmount and throw the snapshot away (``docker rm``)."""
        c = self.runtime
        if c is not None:
            self._output, self._exit = c.logs(), c.exit_code
            c.remove(force=force)
        self.lab._drop_snapshot(self.key)

    def __repr__(self) -> str:
        return f"<LabContainer {self.name} of {self.image} {self.status}>"


class Lab:
    """Store + backend + runtime in one object, and a context manager that closes them.

    ``root`` defaults to ``$LABKIT_ROOT`` or ``/var/lib/labkit``; ``backend`` to ``$LABKIT_BACKEND`` or the
    best one here; ``backend_options`` go to the snapshotter (e.g. ``data_size="4G"`` for thin).
    ``fork="direct"`` forks containers from this process instead of a helper (the CLI: a small process
    that runs one container); a notebook's big kernel keeps the default helper.

    >>> with Lab("/var/tmp/lk-doc", "overlay") as lab:                   # doctest: +SKIP
    ...     lab.import_image("busybox")
    ...     lab.run("busybox", ["echo", "hi"], rm=True).output
    'hi\\n'
    """

    def __init__(self, root: str | None = None, backend: str | None = None, *, fork: str = "helper",
                 **backend_options: Any) -> None:
        self.root = default_root(root)
        if self.root == "/":
            raise errors.InvalidArgument("store root '/'", "would put labkit's store over the whole host",
                                         fix="give a directory of its own, e.g. /var/lib/labkit")
        self.backend = backend or os.environ.get("LABKIT_BACKEND") or default_backend(self.root)
        os.makedirs(self.root, exist_ok=True)
        _mark_store(self.root)
        self.sn: BaseSnapshotter = open_snapshotter(self.backend, os.path.join(self.root, "snapshots", self.backend),
                                                    **backend_options)
        try:
            self.store = ImageStore(os.path.join(self.root, "images", self.backend), self.sn)
            self.runtime = Runtime(os.path.join(self.root, "containers"), fork=fork)
        except BaseException:
            self.sn.close()
            raise

    @property
    def snapshotter(self) -> BaseSnapshotter:
        """The snapshot backend (the contract of :mod:`labkit.snapshots.base`, plus its abilities)."""
        return self.sn

    # ---- images -------------------------------------------------------------------------------------
    def import_image(self, source: str, *, tag: str | None = None, ref: str | None = None) -> str:
        """Register a base image: ``"busybox"``, ``"debian"`` (mmdebstrap, cached), a directory, or an
        archive (a rootfs tar, what ``docker save``/``podman save`` write, or an OCI layout; ``ref`` picks one
        image of an archive that holds several). Returns the image id (the top of a layer chain).

        >>> lab.import_image("busybox")        # doctest: +SKIP
        'c0ffee...'
        """
        if source == "busybox":
            return self.store.import_busybox(tag=tag or "busybox:latest")
        if source == "debian":
            return self.store.import_debian(tag=tag or "debian:bookworm")
        if os.path.isdir(source) or os.path.isfile(source):
            return self.store.import_auto(source, tag=tag, ref=ref)   # a rootfs dir or tar, docker-archive, OCI layout
        raise errors.NotFound(f"image source {source!r}", fix="give busybox, debian, a directory or an archive file")

    def images(self, *, as_frame: bool = True) -> pd.DataFrame:
        """The images as a table: id, short_id, tags, parent, created, created_by, size, exclusive, ...
        (``as_frame=False``: a list of dicts)."""
        return _frame(self.store.images(), as_frame=as_frame)

    def inspect(self, ref: str) -> dict[str, Any]:
        """Everything known about one image, as plain data."""
        return _plain(self.store.inspect(ref))

    def history(self, ref: str, *, as_frame: bool = True) -> pd.DataFrame:
        """The chain from ``ref`` back to its base, newest first: id, created, created_by, comment, sizes."""
        return _frame(self.store.history(ref), as_frame=as_frame)

    def tag(self, ref: str, new: str) -> str:
        """Give image ``ref`` the tag ``new``; returns the image id."""
        return self.store.tag(ref, new)

    def rmi(self, ref: str, *, force: bool = False, as_frame: bool = True) -> pd.DataFrame:
        """Remove an image (``docker rmi``): one row per untagged tag / deleted image, with bytes freed.
        Refused while a container or child image uses it (``force`` untags now, prune deletes later)."""
        return _frame(_removal_rows(self.store.rmi(ref, force=force)),
                      ["action", "what", "freed_bytes", "kept_by"], as_frame=as_frame)

    def prune(self, *, all: bool = False, dry_run: bool = False, as_frame: bool = True) -> pd.DataFrame:
        """Delete dangling images (``all``: every image no container needs); one row per deleted image
        (``would delete`` with ``dry_run``)."""
        return _frame(_removal_rows(self.store.prune(all=all, dry_run=dry_run)),
                      ["action", "what", "freed_bytes", "kept_by"], as_frame=as_frame)

    def whatrequires(self, ref: str) -> dict[str, list[str]]:
        """Images and containers that depend on ``ref``: ``{"images": [...], "containers": [...]}``."""
        return _plain(self.store.whatrequires(ref))

    def df(self, *, as_frame: bool = True) -> pd.DataFrame:
        """Space per image and container: total, shared, exclusive, reclaimable."""
        return _frame(self.store.df(), as_frame=as_frame)

    def tree(self, *, exact: bool = False) -> str:
        """The lineage of every image as text: tags, sizes (``exact``: in bytes), what made it — a recipe
        line or a hand commit — and the containers on it.

        >>> print(lab.tree())              # doctest: +SKIP
        fafbf9d816f2 busybox:latest  2.0 MB, own 720.9 kB  (labkit import busybox)
        └─ 878489a97859 app:v1  2.0 MB, own 1.0 MB  (hand commit: sh -c mkdir /app)
        """
        _text, roots = self.store.tree()
        size = (lambda n: f"{n} B") if exact else _human_size
        lines: list[str] = []

        def draw(node: Any, prefix: str, last: bool, top: bool) -> None:
            how = (f"recipe {node.recipe}" if node.recipe else
                   node.created_by if node.created_by.startswith("labkit ") else f"hand commit: {node.created_by}")
            tags = " ".join(node.tags) or "<none>"
            total = "?" if node.size is None else size(node.size)
            lines.append(f"{'' if top else prefix + ('└─ ' if last else '├─ ')}{node.short_id} {tags}  "
                         f"{total}, own {size(node.exclusive)}  ({_cut(how, 60)})")
            kids = [*node.children]
            inner = "" if top else prefix + ("   " if last else "│  ")
            for i, kid in enumerate(kids):
                draw(kid, inner, i == len(kids) - 1 and not node.containers, False)
            for i, c in enumerate(node.containers):
                lines.append(f"{inner}{'└─ ' if i == len(node.containers) - 1 else '├─ '}container {c}")
        for root in roots:
            draw(root, "", True, True)
        return "\n".join(lines) if lines else "(no images)"

    def build(self, recipe: str, context: str | None = None, *, tag: str | None = None,
              build_args: dict[str, str] | None = None, no_cache: bool = False,
              progress: Callable[[str], Any] | None = print) -> BuildResult:
        """Build an image from a Labfile, a Dockerfile subset (docs/recipes.md): each step is a committed
        image whose ``created_by`` is the recipe line; RUN steps run in containers; a step cache keyed by
        parent, instruction and copied files' digests re-runs only what follows a change.

        >>> lab.build("app/Labfile", "app", tag="app:v1")       # doctest: +SKIP
        """
        def run_step(parent: str, argv: list[str], env: dict[str, str], workdir: str, user: str) -> str:
            c = self.run(parent, argv, name=f"build-{os.urandom(5).hex()}", entrypoint=[], env=env,
                         workdir=workdir, user=user or None, network="none")
            try:
                if progress and c.output:
                    for line in c.output.rstrip("\n").split("\n"):
                        progress(line)
                if c.exit_code != 0:
                    raise errors.FailedPrecondition(f"command {argv!r}", f"exited with {c.exit_code}",
                                                    fix="fix the RUN line; its output is above")
                return self.commit(c)
            finally:
                c.remove(force=True)
        return self.store.build(recipe, context, tag=tag, run_step=run_step, build_args=build_args,
                                no_cache=no_cache, progress=progress)

    def save(self, ref: str, path: str, *, format: str = "oci-archive", compress: str | None = None) -> SaveReport:
        """Write an image as ``oci-archive``, ``docker-archive`` or ``rootfs`` (what ``podman load``,
        skopeo and ``labkit image import`` read); a chain becomes layers.

        >>> lab.save("app:v1", "/tmp/app.tar", format="docker-archive")      # doctest: +SKIP
        """
        return self.store.save(ref, path, format=format, compress=compress)

    # ---- containers ---------------------------------------------------------------------------------
    def run(self, image: str, cmd: Sequence[str] = (), *, name: str | None = None, rm: bool = False,
            detach: bool = False, network: str = "none", memory: int | str | None = None,
            cpus: float | None = None, pids: int | None = None, env: dict[str, str] | None = None,
            workdir: str | None = None, user: str | None = None, readonly: bool = False,
            binds: Sequence[str] = (), entrypoint: Sequence[str] | None = None,
            publish: Sequence[str] = (), **runtime_options: Any) -> LabContainer:
        """Start ``cmd`` in a container on a fresh snapshot of ``image``; waits unless ``detach``.

        With ``rm`` the snapshot is thrown away when the container ends (``docker run --rm``; with
        ``detach``, when it is stopped or removed), so it is prepared ephemeral: its writes are not made
        durable (:data:`labkit.snapshots.base.EPHEMERAL`). As in Docker, the image's config fills what is not
        given: ``entrypoint`` + ``cmd`` (an empty ``cmd`` takes the image's Cmd), its Env under ``env``,
        its WorkingDir and User. ``publish`` takes Docker's ``[IP:]HOST:CONTAINER`` (127.0.0.1 unless an
        address is given; needs ``network="bridge"``). Other keyword options go to the runtime as they
        are: ``privileged``, ``cap_add``, ``cap_drop``, ``hostname``, ``tty``, ``publish`` ... (see
        :meth:`labkit.containers.Runtime.run`).

        >>> lab.run("busybox", ["cat", "/etc/hostname"], rm=True).exit_code      # doctest: +SKIP
        0
        """
        self.runtime.prestart()          # the helper's start-up overlaps the snapshot work below
        image_id, snapshot, info = self.store.run_info(image)
        entry = list(info.entrypoint) if entrypoint is None else list(entrypoint)
        argv = entry + (list(cmd) if cmd else ([] if entrypoint is not None and entrypoint != () else list(info.cmd)))
        if not argv:
            raise errors.InvalidArgument(f"run of image {image!r}", "has no command and the image names none",
                                         fix=f"give one, e.g. labkit run {image} sh -c 'echo hi'")
        env = {**dict(e.split("=", 1) for e in info.env if "=" in e), **(env or {})}
        workdir = workdir or info.workdir or "/"
        user = user or info.user or None
        ports: list[Publish] = []
        if publish:
            from .containers.proxy import parse_publish
            ports = [parse_publish(p) for p in publish]
        if ports and network != "bridge":
            raise errors.InvalidArgument(f"publishing {', '.join(publish)}", f"needs a network, not {network!r}",
                                         fix="add --net bridge (labkit's default network is none)")
        name = check_name(name) if name is not None else os.urandom(5).hex()
        c = LabContainer(self, name, image, argv, rm)
        if self._exists(c.key):
            raise errors.AlreadyExists(f"container {name!r}", fix=f"choose another name or `labkit rm {name}`")
        target = self._rootfs(c.key)
        os.makedirs(target, exist_ok=True)
        mounted: Mounted | None = None
        try:
            labels = {"labkit.container": name, "labkit.image": image_id}
            if rm:      # thrown away when it ends: the backend may skip making its writes durable
                labels[EPHEMERAL] = "true"
            m = self.sn.prepare(c.key, snapshot, labels=labels)
            mounted = m.mount(target)
            rc = self.runtime.run(target, argv, name=name, network=network,
                                  memory=parse_size(memory, what="memory") if memory is not None else None,
                                  cpus=cpus, pids=pids, env=env or None, workdir=workdir, user=user,
                                  readonly=readonly, binds=binds, detach=detach or bool(ports), **runtime_options)
            if ports:
                from .containers.proxy import start_proxy
                try:
                    if rc.state.pid is None or rc.state.ip is None:     # (a bridge container has both)
                        raise errors.FailedPrecondition(f"container {name!r}",
                                                        "has no process or address to publish to")
                    start_proxy(rc.id, rc.dir, rc.state.pid, rc.state.ip, ports)
                except BaseException:
                    rc.remove(force=True)
                    raise
                if not detach:
                    rc.wait()
        except BaseException:
            if mounted is not None:
                mounted.unmount()
            self._drop_snapshot(c.key)
            raise
        if rm and not detach:
            c.remove()
        return c

    def container(self, name: str) -> LabContainer:
        """A container by name (also one started by another process)."""
        rc = self.runtime.get(name)
        info = self.sn.stat(f"ctr-{rc.name}")
        return LabContainer(self, rc.name, info.labels.get("labkit.image", "?"), list(rc.state.cmd), False)

    def containers(self) -> list[LabContainer]:
        """Every container of this store that the runtime knows."""
        out = []
        for rc in self.runtime.list():
            try:
                out.append(self.container(rc.name))
            except errors.NotFound:
                continue
        return out

    def ps(self, *, all: bool = True, as_frame: bool = True) -> pd.DataFrame:
        """Containers known to the runtime, as a table (``all=False``: only running ones)."""
        rows = [_plain(r) for r in self.runtime.ps()]
        images = {i.labels.get("labkit.container"): i.labels.get("labkit.image", "")
                  for i in self.sn.walk("kind==active")}
        for r in rows:
            r.setdefault("image", images.get(r.get("name"), ""))
        if not all:
            rows = [r for r in rows if r.get("status") == "running"]
        return _frame(rows, as_frame=as_frame)

    def commit(self, container: LabContainer | str, tag: str | None = None, *, comment: str = "") -> str:
        """A new image from a container's filesystem: its parent is the container's image, its
        ``created_by`` the container's command. A running container is frozen while committing and
        keeps running; a stopped one's snapshot is committed (and the container keeps a fresh one)."""
        c = container if isinstance(container, LabContainer) else self.container(container)
        created_by = " ".join(c.cmd)
        rc = c.runtime
        if rc is not None and rc.running:
            with rc.paused():
                return self.store.commit(c.key, tag, created_by=created_by, comment=comment)
        return self.store.commit(c.key, tag, created_by=created_by, comment=comment)

    def reset(self) -> None:
        """Remove every container, image and snapshot of this store (a notebook's first cell, so that it
        re-runs after its kernel was killed mid-way). Running containers are killed, and what a killed
        kernel left mounted for this store is released first (``labkit gc``)."""
        from .gc import gc
        gc(self.root, force=True)
        for c in self.containers():
            c.remove(force=True)
        for info in reversed(list(self.sn.walk())):
            if info.kind.value != "committed":
                self._drop_snapshot(info.name)
        check = getattr(self.store, "check", None)
        if check is not None:
            check(repair=True)
        for image in _frame(self.store.images()).get("id", []):
            try:
                self.store.rmi(image, force=True)
            except errors.NotFound:
                pass
        self.store.prune(all=True)
        for info in reversed(list(self.sn.walk())):
            self._drop_snapshot(info.name)

    def check(self, *, repair: bool = False) -> list[dict[str, str]]:
        """The whole store in one report: snapshot metadata (operations a crashed process left pending),
        the thin pool's own check, images.db against the snapshotter, and ``rootfs/`` directories no
        container owns. Each row: ``part``, ``problem``, ``repair`` (what was done, or would be with
        ``repair=True``). An empty list is a clean store.

        >>> lab.check()          # doctest: +SKIP
        []
        """
        rows: list[dict[str, str]] = []
        recover = getattr(self.sn, "recover", None)
        if recover is not None and repair:
            for r in recover() or []:
                rows.append({"part": "snapshots", "problem": str(r), "repair": "finished or rolled back"})
        pending = getattr(self.sn, "pending", None)
        if pending is not None and not repair:
            for r in pending() or []:
                rows.append({"part": "snapshots", "problem": str(r), "repair": "roll back (labkit check --repair)"})
        if isinstance(self.sn, PoolBacked):
            report = self.sn.pool_check()
            for p in report.problems:
                rows.append({"part": "thin pool", "problem": p, "repair": "none automatic: see docs/thin-pool.md"})
        found = self.store.check(repair=repair)
        problems, repairs = list(found.problems), list(found.repairs)
        for i, p in enumerate(problems):
            rows.append({"part": "images", "problem": str(p),
                         "repair": str(repairs[i]) if i < len(repairs)
                         else ("repaired" if repair else "labkit check --repair")})
        base = os.path.join(self.root, "rootfs")
        keys = {i.name for i in self.sn.walk()}
        for entry in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            path = os.path.join(base, entry)
            if entry in keys:
                continue
            if mounts.mounts_under(path):
                rows.append({"part": "rootfs", "problem": f"{path} is mounted but no snapshot owns it",
                             "repair": "labkit gc releases it"})
                continue
            done = "removed" if repair else "remove (labkit check --repair)"
            if repair and os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif repair:
                os.unlink(path)
            rows.append({"part": "rootfs", "problem": f"leftover directory {path}", "repair": done})
        return rows

    def _rootfs(self, key: str) -> str:
        base = os.path.join(self.root, "rootfs")
        target = os.path.join(base, key)
        real, real_base = os.path.realpath(target), os.path.realpath(base)
        if not inside(real, real_base) or real == real_base:
            raise errors.InvalidArgument(f"container snapshot key {key!r}", "leaves the store's rootfs directory",
                                         fix="use a plain container name")
        return target

    def _exists(self, key: str) -> bool:
        try:
            self.sn.stat(key)
        except errors.NotFound:
            return False
        return True

    def _drop_snapshot(self, key: str) -> None:
        target = self._rootfs(key)
        if os.path.isdir(target) and not os.path.islink(target):
            unmount(target)
            shutil.rmtree(target, ignore_errors=True)
        try:
            self.sn.remove(key)
        except errors.NotFound:
            pass

    def close(self) -> None:
        """Release the runtime's helper, the image store and the snapshotter (containers keep running)."""
        try:
            self.runtime.close()
        finally:
            try:
                self.store.close()
            finally:
                self.sn.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.root} backend={self.backend}>"


def _mark_store(root: str) -> None:
    path = os.path.join(root, STORE_MARKER)
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, b"labkit store: `labkit gc --root` accepts this directory\n")
        finally:
            os.close(fd)


def _removal_rows(out: Any) -> list[dict[str, Any]]:
    """rmi/prune results as rows: action (untagged, deleted, kept), what, freed_bytes, kept_by."""
    out = _plain(out)
    rows = [{"action": "untagged", "what": t, "freed_bytes": 0, "kept_by": ""} for t in out.get("untagged", ())]
    done = "would delete" if out.get("dry_run") else "deleted"
    for r in out.get("removals", ()):
        r = _plain(r)
        tags = ", ".join(r.get("tags", ()))
        rows.append({"action": done, "what": r.get("short_id") or str(r.get("id", ""))[:12]
                     + (f" ({tags})" if tags else ""), "freed_bytes": int(r.get("freed") or 0), "kept_by": ""})
    if "removals" not in out:           # the older dict shape: deleted ids and one total
        deleted = list(out.get("deleted", ()))
        for d in deleted:
            rows.append({"action": "deleted", "what": str(d)[:12],
                         "freed_bytes": int(out.get("freed", 0)) if len(deleted) == 1 else 0, "kept_by": ""})
    for k in out.get("kept_by", ()):
        rows.append({"action": "kept", "what": "", "freed_bytes": 0, "kept_by": k})
    return rows
