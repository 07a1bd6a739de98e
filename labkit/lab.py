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
import secrets
import shutil
from typing import Any, Sequence

import pandas as pd

from . import errors
from .config import default_root
from .images import ImageStore
from .snapshots import BaseSnapshotter, default_backend, open_snapshotter
from .snapshots.mount import Mounted, unmount



class LabContainer:
    """A container started by :meth:`Lab.run`: its runtime record plus its snapshot."""

    def __init__(self, lab: "Lab", name: str, image: str, cmd: Sequence[str], rm: bool) -> None:
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

    def wait(self, timeout: float | None = None) -> int | None:
        return self.runtime.wait(timeout)

    def exec(self, cmd: Sequence[str], **kw: Any) -> tuple[int, str]:
        """Run ``cmd`` inside the running container; returns (exit code, output)."""
        return self.runtime.exec(cmd, **kw)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; a ``rm`` container is removed afterwards."""
        code = self.runtime.stop(timeout)
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
    """Store + backend + runtime in one object. ``root`` defaults to ``$LABKIT_ROOT`` or
    ``/var/lib/labkit``; ``backend`` to ``$LABKIT_BACKEND`` or the best one here."""

    def __init__(self, root: str | None = None, backend: str | None = None, **backend_options: Any) -> None:
        from .containers import Runtime
        self.root = default_root(root)
        self.backend = backend or os.environ.get("LABKIT_BACKEND") or default_backend(self.root)
        self.sn: BaseSnapshotter = open_snapshotter(self.backend, os.path.join(self.root, "snapshots", self.backend),
                                                    **backend_options)
        try:
            self.store = ImageStore(os.path.join(self.root, "images", self.backend), self.sn)
            self.runtime = Runtime(os.path.join(self.root, "containers"))
        except BaseException:
            self.sn.close()
            raise

    # ---- images -------------------------------------------------------------------------------------
    def import_image(self, source: str, *, tag: str | None = None) -> str:
        """Register a base image: ``"busybox"``, ``"debian"`` (mmdebstrap, cached), a directory, or a
        rootfs tar archive. Returns the image id."""
        if source == "busybox":
            return self.store.import_busybox(tag=tag or "busybox:latest")
        if source == "debian":
            return self.store.import_debian(tag=tag or "debian:bookworm")
        if os.path.isdir(source):
            return self.store.import_dir(source, tag=tag)
        if os.path.isfile(source):
            return self.store.import_tar(source, tag=tag)
        raise errors.NotFound(f"image source {source!r}", fix="give busybox, debian, a directory or a tar file")

    def images(self) -> pd.DataFrame:
        """The images as a table (id, tags, parent, created, created_by, size, exclusive)."""
        return self.store.images()

    def df(self) -> pd.DataFrame:
        """Space per image and container: total, shared, exclusive, reclaimable."""
        return self.store.df()

    def tree(self) -> str:
        """The lineage of every image, with sizes, as text."""
        return self.store.tree()[0]

    # ---- containers ---------------------------------------------------------------------------------
    def run(self, image: str, cmd: Sequence[str], *, name: str | None = None, rm: bool = False,
            detach: bool = False, network: str = "none", memory: int | str | None = None,
            cpus: float | None = None, pids: int | None = None, env: dict[str, str] | None = None,
            workdir: str = "/", user: str | None = None, readonly: bool = False,
            binds: Sequence[str] = ()) -> LabContainer:
        """Start ``cmd`` in a container on a fresh snapshot of ``image``; waits unless ``detach``.

        With ``rm`` the snapshot is thrown away when the container ends (``docker run --rm``).
        """
        from .units import parse_size
        image_id = self.store.resolve(image)
        name = name or secrets.token_hex(5)
        c = LabContainer(self, name, image, cmd, rm)
        if any(i.name == c.key for i in self.sn.walk(f"name=={c.key}")):
            raise errors.AlreadyExists(f"container {name!r}", fix="choose another name or remove it")
        snapshot = self.store.inspect(image_id)["snapshot"]
        target = os.path.join(self.root, "rootfs", c.key)
        os.makedirs(target, exist_ok=True)
        mounted: Mounted | None = None
        try:
            m = self.sn.prepare(c.key, snapshot, labels={"labkit.container": name, "labkit.image": image_id})
            mounted = m.mount(target)
            self.runtime.run(target, list(cmd), name=name, network=network,
                             memory=parse_size(memory, what="memory") if memory is not None else None,
                             cpus=cpus, pids=pids, env=env, workdir=workdir, user=user, readonly=readonly,
                             binds=binds, detach=detach)
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
        return LabContainer(self, rc.name, info.labels.get("labkit.image", "?"), rc.state.get("cmd", []), False)

    def ps(self) -> pd.DataFrame:
        """Containers known to the runtime, as a table."""
        return pd.DataFrame(self.runtime.ps())

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

    def _drop_snapshot(self, key: str) -> None:
        target = os.path.join(self.root, "rootfs", key)
        if os.path.isdir(target):
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

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.root} backend={self.backend}>"
