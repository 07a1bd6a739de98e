"""Experiment ``minimal-image``: one application, three images — the column's figure 2 (a Debian base, ``apt-get
install`` in a container, commit), the package manager run from outside into an empty directory
(``packages``: the package and its dependencies), and only the files the application touches (``minimal``:
traced in a throw-away container of the figure-2 image and copied into an empty image) — measured through
:class:`labkit.Lab`, as a notebook would.

The pieces (applications, the package cache, the trace, the closure) are in :mod:`labkit.images.minimal`;
this module builds the three images in a Lab (:func:`build`) and measures them (:func:`measure`). Everything
comes from the package cache, so after the first run nothing uses the network.

Columns: ``way`` (figure2, packages, minimal), ``image_bytes`` (apparent content), ``bytes_exclusive`` (what
the store holds for this image alone: ``df``'s exclusive; the figure-2 image shares the base), ``bytes_total``
(with its parent chain), ``base_bytes`` (the base it needs underneath), ``files`` (non-directory entries),
``build_seconds`` (apt-get in a container / mmdebstrap / trace + copy), ``import_seconds`` (commit or
import), ``prepare_seconds`` (``lab.run`` until the runtime starts: the snapshot prepared and mounted),
``start_seconds`` (until the application's process runs: namespaces, pivot_root, exec), ``run_seconds``
(until it exited), ``remove_seconds``, ``first_write_seconds`` and ``rewrite_seconds`` (one byte of the
application's executable rewritten in the container: copy-on-write, then private), ``written_file_bytes``
(that file's size), ``exit_code`` and ``check_ok`` (the application's own check passed; 127 and False when
the command cannot even be executed in the image).

>>> from labkit.experiments import framework
>>> "minimal-image" in framework.names()
True
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from .. import errors
from ..images.busybox import find_busybox
from ..images.minimal import (
    APPS,
    MAX_TRACE,
    TRACE_FILE,
    TRACE_MOUNT,
    WAYS,
    App,
    PackageCache,
    closure,
    copy_closure,
    count_files,
    first_write,
    install_command,
    packages_rootfs,
    parse_trace,
    trace_command,
    which,
)
from ..lab import Lab, LabContainer
from .common import MIB, backend_param, store_options
from .framework import Context, Param, experiment

__all__ = ["Built", "build", "measure", "rootfs_of", "probe", "summary", "BASE_TAG", "TOOLS_MOUNT"]

#: the tag the Debian base gets in the Lab
BASE_TAG = "debian:bookworm"
#: where :func:`probe` binds the host's static busybox: a debugging tool brought from outside
TOOLS_MOUNT = "/.labkit-tools/busybox"
#: the biggest store a case needs: the base (~170 MB), python3's figure-2 layer, the others, containers
_LARGEST = 768 * MIB
_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


@dataclasses.dataclass
class Built:
    """One of the three images of an application, and what making it cost."""

    way: str
    app: str
    image: str              #: image id
    tag: str
    files: int              #: non-directory entries
    build_seconds: float    #: apt-get in a container / mmdebstrap / trace + resolve + copy
    import_seconds: float   #: lab.commit / lab.import_image
    check_ok: bool | None = None  #: the application's own check, run once in the new image
    detail: str = ""        #: what that check said (and, for ``minimal``, how many paths were traced)


def rootfs_of(c: LabContainer) -> str:
    """Where the container's snapshot is mounted on the host (it stays mounted after the container exits,
    until it is removed)."""
    rc = c.runtime
    if rc is None:
        raise errors.NotFound(f"container {c.name!r}", "was removed", fix="run it without rm=True")
    return str(rc.state.rootfs)


def _base(lab: Lab, cache: PackageCache) -> str:
    """The Debian base image, imported from the cached minbase tarball if the Lab does not have it yet."""
    images = lab.images()
    if len(images) and any(BASE_TAG in tuple(t) for t in images.get("tags", [])):
        return BASE_TAG
    lab.import_image(cache.debian_tarball(), tag=BASE_TAG)
    return BASE_TAG


def build(lab: Lab, app: App | str, *, cache: PackageCache | str | None = None, ways: Sequence[str] = WAYS,
          workdir: str | None = None) -> dict[str, Built]:
    """Make the images of ``app`` in ``lab`` (tags ``<app>:figure2``, ``<app>:packages``, ``<app>:minimal``;
    ``minimal`` is traced from ``figure2``, which is then made too). The Debian base is imported as
    ``debian:bookworm`` if missing. ``workdir`` (default a fresh directory under /var/tmp) holds the
    trees before they are imported; it is left empty.

    >>> built = build(lab, "hello")                               # doctest: +SKIP
    >>> built["minimal"].files < built["figure2"].files           # doctest: +SKIP
    True
    """
    app = APPS[app] if isinstance(app, str) else app
    unknown = set(ways) - set(WAYS)
    if unknown:
        raise errors.InvalidArgument(f"ways {sorted(unknown)}", "are unknown", fix=f"choose from {', '.join(WAYS)}")
    cache = cache if isinstance(cache, PackageCache) else PackageCache(cache)
    cache.ensure([app.package, "strace"] if "minimal" in ways else [app.package])
    base = _base(lab, cache)
    work = tempfile.mkdtemp(prefix=f"minimal-{app.name}-", dir=workdir or "/var/tmp")
    out: dict[str, Built] = {}
    try:
        if "figure2" in ways or "minimal" in ways:
            out["figure2"] = _checked(lab, app, _figure2(lab, app, cache, base))
        if "packages" in ways:
            out["packages"] = _checked(lab, app, _packages(lab, app, cache, work))
        if "minimal" in ways:
            out["minimal"] = _checked(lab, app, _minimal(lab, app, cache, out["figure2"], work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {w: out[w] for w in WAYS if w in ways}


def _figure2(lab: Lab, app: App, cache: PackageCache, base: str) -> Built:
    t0 = time.monotonic()
    c = lab.run(base, install_command([app.package]), name=f"install-{app.name}", binds=[cache.bind], env=_ENV)
    try:
        built = time.monotonic() - t0
        if c.exit_code != 0:
            raise errors.FailedPrecondition(f"apt-get install {app.package} in a container of {base}",
                                            f"exited {c.exit_code}: {c.output.strip()[-300:]}",
                                            fix="is the package in the cache? PackageCache.ensure()")
        t1 = time.monotonic()
        image = lab.commit(c, f"{app.name}:figure2")
        imported = time.monotonic() - t1
    finally:
        c.remove()
    pristine = lab.run(f"{app.name}:figure2", ["true"], name=f"count-{app.name}")
    try:
        files = count_files(rootfs_of(pristine))
    finally:
        pristine.remove()
    return Built("figure2", app.name, image, f"{app.name}:figure2", files, built, imported)


def _packages(lab: Lab, app: App, cache: PackageCache, work: str) -> Built:
    tree = os.path.join(work, "packages")
    t0 = time.monotonic()
    packages_rootfs(cache, app.package, tree)
    built = time.monotonic() - t0
    files = count_files(tree)
    t1 = time.monotonic()
    image = lab.import_image(tree, tag=f"{app.name}:packages")
    imported = time.monotonic() - t1
    shutil.rmtree(tree, ignore_errors=True)
    return Built("packages", app.name, image, f"{app.name}:packages", files, built, imported)


def _minimal(lab: Lab, app: App, cache: PackageCache, figure2: Built, work: str) -> Built:
    traces = tempfile.mkdtemp(prefix="trace-", dir=work)
    t0 = time.monotonic()
    c = lab.run(figure2.tag, trace_command(app), name=f"trace-{app.name}", rm=True, env=_ENV,
                binds=[cache.bind, f"{traces}:{TRACE_MOUNT}"])
    if c.exit_code == 97 or not app.check(c.exit_code, c.output):
        raise errors.FailedPrecondition(f"the traced run of {' '.join(app.command)} in {figure2.tag}",
                                        f"exited {c.exit_code} without {app.expect!r}: {c.output.strip()[-300:]}",
                                        fix="check the application's command and expected output")
    text = _read_trace(os.path.join(traces, TRACE_FILE))
    if len(text) > MAX_TRACE:
        raise errors.FailedPrecondition(f"trace of {app.name}", f"is longer than {MAX_TRACE} bytes",
                                        fix="trace a shorter command")
    paths = parse_trace(text)
    tree = os.path.join(work, "minimal")
    pristine = lab.run(figure2.tag, ["true"], name=f"copy-{app.name}")     # the image as committed
    try:
        root = rootfs_of(pristine)
        copy_closure(root, closure(root, paths), tree)
    finally:
        pristine.remove()
    built = time.monotonic() - t0
    files = count_files(tree)
    t1 = time.monotonic()
    image = lab.import_image(tree, tag=f"{app.name}:minimal")
    imported = time.monotonic() - t1
    shutil.rmtree(tree, ignore_errors=True)
    return Built("minimal", app.name, image, f"{app.name}:minimal", files, built, imported,
                 detail=f"{len(paths)} paths traced")


def _read_trace(path: str) -> bytes:
    """The trace a container wrote into our directory: a regular file, never through a symlink, at most
    :data:`MAX_TRACE` + 1 bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise errors.InvalidArgument(f"trace {path}", "is not a regular file")
        chunks, left = [], MAX_TRACE + 1
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _checked(lab: Lab, app: App, b: Built) -> Built:
    """Run the application's own check once in the new image: ``check_ok``, and what it said in ``detail``."""
    try:
        r = lab.run(b.tag, list(app.command), name=f"check-{app.name}-{b.way}", rm=True)
        b.check_ok, said = app.check(r.exit_code, r.output), f"exit {r.exit_code}: {r.output.strip()[-200:]}"
    except errors.InvalidArgument as e:
        b.check_ok, said = False, str(e)
    b.detail = f"{b.detail}; {said}" if b.detail else said
    return b


def _no_tick(n: int = 1) -> None:
    pass


def _cell(frame: pd.DataFrame, row: str, column: str) -> Any:
    """One cell of ``lab.images()`` or ``lab.df()`` (frames of mixed types: any scalar)."""
    return frame.loc[row, column]


def measure(lab: Lab, app: App | str, built: dict[str, Built], *, repeat: int = 3,
            tick: Callable[[int], None] = _no_tick) -> list[dict[str, Any]]:
    """Rows for each built image: its sizes (``lab.images()``, ``lab.df()``), and ``repeat + 1`` runs of
    the application (repetition 0 is the warm-up), each timed (start, run, remove) with a first write to
    the application's executable in the container."""
    app = APPS[app] if isinstance(app, str) else app
    images = lab.images().set_index("id")
    df = lab.df().set_index("name")
    base_id = lab.inspect(BASE_TAG)["id"] if BASE_TAG in _tags(lab) else None
    static: dict[str, dict[str, Any]] = {}
    for way, b in built.items():
        short = b.image[:12]
        static[way] = {
            "app": app.name, "way": way, "image_bytes": int(_cell(images, b.image, "size") or 0),
            "bytes_exclusive": int(_cell(df, short, "exclusive")), "bytes_total": int(_cell(df, short, "total")),
            "base_bytes": int(_cell(images, base_id, "size") or 0) if way == "figure2" and base_id else 0,
            "files": b.files, "build_seconds": b.build_seconds, "import_seconds": b.import_seconds}
    rows = []
    for r in range(repeat + 1):
        for way, b in built.items():
            rows.append({**static[way], "repeat": r, **_one_run(lab, app, b, f"{app.name}-{way}-{r}")})
        tick(1)
    return rows


def _tags(lab: Lab) -> set[str]:
    return {t for tags in lab.images().get("tags", []) for t in tags}


def _one_run(lab: Lab, app: App, b: Built, name: str) -> dict[str, Any]:
    t0 = time.time()
    try:
        c = lab.run(b.tag, list(app.command), name=name)
    except errors.InvalidArgument as e:     # the command cannot even be executed in this image
        if "cannot exec" not in str(e):
            raise
        nan = float("nan")
        return {"prepare_seconds": nan, "start_seconds": nan, "run_seconds": nan, "remove_seconds": nan,
                "first_write_seconds": nan, "rewrite_seconds": nan, "written_file_bytes": 0, "exit_code": 127,
                "check_ok": False}
    ended = time.time()
    try:
        rc = c.runtime
        started = float(getattr(rc.state, "started", 0) or 0) if rc is not None else 0.0
        created = float(getattr(rc.state, "created", 0) or 0) if rc is not None else 0.0
        code = c.exit_code
        ok = app.check(code, c.output)
        root = rootfs_of(c)
        exe = which(root, app.command[0])
        first = again = float("nan")
        size = 0
        if exe is not None:
            first, again, size = first_write(root, exe)
    finally:
        t1 = time.time()
        c.remove()
        removed = time.time() - t1
    return {"prepare_seconds": (created - t0) if created else float("nan"),
            "start_seconds": (started - t0) if started else float("nan"), "run_seconds": ended - t0,
            "remove_seconds": removed, "first_write_seconds": first, "rewrite_seconds": again,
            "written_file_bytes": size, "exit_code": code, "check_ok": ok}


def probe(lab: Lab, image: str, paths: Sequence[str]) -> dict[str, bool]:
    """Which of ``paths`` exist in ``image``, asked from inside a container of it with a tool brought from
    outside: the host's static busybox bound at :data:`TOOLS_MOUNT` (how one debugs an image that has no
    shell — ``kubectl debug`` and ``docker debug`` do the same).

    >>> probe(lab, "hello:minimal", ["/bin/sh", "/usr/bin/hello"])      # doctest: +SKIP
    {'/bin/sh': False, '/usr/bin/hello': True}
    """
    for p in paths:
        if not p.startswith("/") or "\0" in p or "\n" in p:
            raise errors.InvalidArgument(f"path {p!r}", "must be absolute, on one line")
    script = 'for p in "$@"; do if [ -e "$p" ] || [ -L "$p" ]; then echo "yes $p"; else echo "no $p"; fi; done'
    c = lab.run(image, [TOOLS_MOUNT, "sh", "-c", script, "sh", *paths], rm=True,
                binds=[f"{find_busybox()}:{TOOLS_MOUNT}:ro"])
    found = {line[4:] for line in c.output.splitlines() if line.startswith("yes ")}
    return {p: p in found for p in paths}


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per application and way: median bytes, files, times and the check (warm-up dropped)."""
    d = df[~df.warmup] if "warmup" in df else df
    by = [c for c in ("backend", "app", "way") if c in d]
    cols = ["image_bytes", "bytes_exclusive", "bytes_total", "files", "build_seconds", "import_seconds",
            "start_seconds", "run_seconds", "first_write_seconds"]
    out = d.groupby(by)[cols].median()
    out["check_ok"] = d.groupby(by).check_ok.all()
    order = {w: i for i, w in enumerate(WAYS)}
    return out.sort_index(level=by, key=lambda s: s.map(order) if s.name == "way" else s)


@experiment("minimal-image",
            title="one application three ways: base OS + apt-get (figure 2), packages only, only the files it touches",
            params=[Param("app", "choice", list(APPS), "applications: a Debian package, a command, its check",
                          choices=tuple(APPS), sweep=True),
                    backend_param(("overlay", "thin")),
                    Param("cache", "str", "", "package cache directory (empty: $LABKIT_CACHE or /var/cache/labkit)")],
            columns={"way": "figure2 (base + apt-get + commit), packages (mmdebstrap --variant=extract), "
                            "minimal (traced files)",
                     "image_bytes": "apparent content of the image",
                     "bytes_exclusive": "what the store holds for this image alone",
                     "bytes_total": "with its parent chain (df total)",
                     "base_bytes": "the base image underneath (figure2)",
                     "files": "non-directory entries", "build_seconds": "making the tree / the container's change",
                     "import_seconds": "commit or import",
                     "prepare_seconds": "lab.run until the runtime starts (snapshot)",
                     "start_seconds": "lab.run until the process runs",
                     "run_seconds": "lab.run until it exited",
                     "first_write_seconds": "first write to the executable (copy-on-write)",
                     "rewrite_seconds": "the same write again", "check_ok": "the application's own check passed"},
            summary=summary)
def minimal_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """A fresh Lab per (application, backend): the three images built once, then ``repeat + 1`` runs each."""
    base = tempfile.mkdtemp(prefix="minimal-", dir=ctx.root)
    try:
        with Lab(os.path.join(base, "store"), p["backend"], **store_options(p["backend"], _LARGEST)) as lab:
            try:
                built = build(lab, p["app"], cache=p["cache"] or None, workdir=base)
                return measure(lab, p["app"], built, repeat=repeat, tick=ctx.tick)
            finally:
                lab.reset()
    finally:
        shutil.rmtree(base, ignore_errors=True)
