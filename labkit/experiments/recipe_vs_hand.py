"""Experiment ``recipe-vs-hand``: the same small application made by hand (the column's figure 2: a base
image, a shell in a container, commands typed into it, commit) and by a recipe (a Labfile built with
:meth:`labkit.Lab.build`); then one line of it changes and both make it again — measured through
:class:`labkit.Lab`, as a notebook would.

The application is a shell script on busybox (``/app/app.sh``), its configuration (``/app/app.conf``) and a
"dependency" that an install command writes (``/app/lib.bin`` of ``data`` bytes and ``/app/lib.version``):
what a package would bring. Both ways run the same commands; only how they are recorded differs.

* **by hand**: ``sh`` runs in a container of ``busybox`` and the commands are typed into it (its stdin:
  ``mkdir``, the install line, two files pasted with ``cat > FILE <<EOF``, ``chmod``); the container is
  committed as ``app:latest``. A change is typed into a new container of ``app:latest`` and committed
  again: the new image is a child of the old one (the sprawl of level 07).
* **by a recipe**: a build context (``Labfile``, ``app.sh``, ``app.conf``) built with ``Lab.build``; a
  change edits one line of the context and builds again, and the step cache re-runs only the steps from
  the changed one on. The rebuild moves the tag; the old steps' images dangle and ``prune`` removes them.

``change`` picks the line: ``app`` (``VERSION=1`` → ``2`` in ``app.sh``: ``sed -i`` by hand, the file edited
for the recipe) or ``dependency`` (the install line's version 1 → 2: typed again by hand, the ``RUN`` line
edited in the Labfile).

Each method gets a store of its own (with busybox), so the space is the method's. One row per (method,
phase): ``phase`` is ``first build``, ``after change`` or ``after prune``; ``seconds`` (wall time of the
phase's machine work: the container, the commands, the commit — or the build, or the prune; a person's
typing is not counted), ``steps`` (commands typed / the recipe's steps, ``FROM`` included) and
``steps_run`` (what ran in that phase: every typed command; the recipe's steps that were not taken from the
cache or the store), ``images_in_store``, ``bytes_stored`` (the store's ``store_space()``) and
``bytes_added`` (minus the store with only busybox), ``chain_depth`` (images in the result's lineage, its
base included), ``explainable`` (the result's history names every command and file that made it: the
install line, ``chmod`` and both files) and ``runs`` (the result prints what the application should).

>>> from labkit.experiments import framework
>>> "recipe-vs-hand" in framework.names()
True
>>> print(labfile(1, 1 << 20).splitlines()[1])
FROM busybox
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .. import errors
from ..lab import Lab
from .common import MIB, backend_param, store_options
from .framework import Context, Param, experiment

__all__ = ["CHANGES", "PHASES", "METHODS", "TAG", "BASE", "Made", "app_script", "APP_CONF", "install_command",
           "labfile", "write_context", "session", "change_session", "expected_output", "by_hand", "by_recipe",
           "observe", "prune", "trial", "summary"]

#: what one line changes: a line of the application's script, or the line that installs its dependency
CHANGES = ("app", "dependency")
PHASES = ("first build", "after change", "after prune")
METHODS = ("hand", "recipe")
TAG = "app:latest"
BASE = "busybox"
#: the application's configuration (the same for both ways)
APP_CONF = "GREETING=hello\n"
_BLOCK = 64 << 10


def app_script(version: int) -> str:
    """The application: a shell script that reads its configuration and says which version runs.

    >>> app_script(2).splitlines()[1]
    'VERSION=2'
    """
    return ("#!/bin/sh\n"
            f"VERSION={int(version)}\n"
            '. "${APP_CONF:-/app/app.conf}"\n'
            'echo "$GREETING from app v$VERSION (lib $(cat /app/lib.version))"\n')


def expected_output(version: int, lib_version: int) -> str:
    """What the application prints at these versions.

    >>> expected_output(2, 1)
    'hello from app v2 (lib 1)'
    """
    return f"hello from app v{int(version)} (lib {int(lib_version)})"


def install_command(lib_version: int, data: int) -> str:
    """The install line (a stand-in for ``apt-get install``): ``data`` bytes of dependency (rounded down to
    64 KiB, at least one block) and its version file — typed by hand, a ``RUN`` line in the recipe.

    >>> print(install_command(1, 1 << 20))
    mkdir -p /var/log/app && dd if=/dev/urandom of=/app/lib.bin bs=64k count=16 2>/dev/null && echo 1 > /app/lib.version
    """
    count = max(1, int(data) // _BLOCK)
    return (f"mkdir -p /var/log/app && dd if=/dev/urandom of=/app/lib.bin bs=64k count={count} 2>/dev/null"
            f" && echo {int(lib_version)} > /app/lib.version")


def labfile(lib_version: int, data: int) -> str:
    """The recipe: the hand session's commands written down (``WORKDIR`` makes ``/app``; the files come
    from the build context; ``ENV`` and ``CMD`` record what a hand commit cannot). The install comes before
    the application's files, so that a change to the application leaves it in the cache."""
    return ("# the application of the hand session, written down\n"
            f"FROM {BASE}\n"
            "ENV APP_CONF=/app/app.conf\n"
            "WORKDIR /app\n"
            f"RUN {install_command(lib_version, data)}\n"
            "COPY app.conf app.sh ./\n"
            "RUN chmod 755 app.sh\n"
            'CMD ["/app/app.sh"]\n')


def _write(dir_fd: int, name: str, text: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_context(path: str, *, version: int = 1, lib_version: int = 1, data: int = MIB) -> str:
    """Write (or rewrite) the build context ``path``: ``Labfile``, ``app.sh``, ``app.conf``; returns the
    Labfile's path. Files are written in the directory, never through a symlink.

    >>> write_context("/var/tmp/app", version=2)       # doctest: +SKIP
    '/var/tmp/app/Labfile'
    """
    os.makedirs(path, exist_ok=True)
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _write(dfd, "app.conf", APP_CONF)
        _write(dfd, "app.sh", app_script(version))
        _write(dfd, "Labfile", labfile(lib_version, data))
    finally:
        os.close(dfd)
    return os.path.join(path, "Labfile")


def _paste(path: str, text: str) -> str:
    """A file pasted into a shell: ``cat > path <<'EOF'`` ... ``EOF`` (nothing in it is expanded)."""
    if "\nEOF\n" in "\n" + text:
        raise errors.InvalidArgument(f"text for {path}", "contains a line EOF", fix="choose other text")
    return f"cat > {path} <<'EOF'\n{text}EOF"


def session(data: int, *, version: int = 1, lib_version: int = 1) -> list[str]:
    """The commands typed into ``sh`` in a container of busybox to install the application (figure 2),
    one entry per command (a pasted file is one command).

    >>> [c.split()[0] for c in session(1 << 20)]
    ['mkdir', 'mkdir', 'cat', 'cat', 'chmod']
    """
    return ["mkdir -p /app", install_command(lib_version, data), _paste("/app/app.conf", APP_CONF),
            _paste("/app/app.sh", app_script(version)), "chmod 755 /app/app.sh"]


def change_session(change: str, data: int) -> list[str]:
    """The commands typed into a container of the hand-made image to make the one-line ``change``.

    >>> change_session("app", 1 << 20)
    ["sed -i 's/^VERSION=1$/VERSION=2/' /app/app.sh"]
    """
    if change == "app":
        return ["sed -i 's/^VERSION=1$/VERSION=2/' /app/app.sh"]
    if change == "dependency":
        return [install_command(2, data)]
    raise errors.InvalidArgument(f"change {change!r}", "is unknown", fix=f"choose one of {', '.join(CHANGES)}")


@dataclass(frozen=True)
class Made:
    """One way of making the image, once: the image, the wall time, the steps and the steps that ran."""

    method: str
    image: str
    seconds: float
    steps: int
    steps_run: int


def by_hand(lab: Lab, commands: Sequence[str], *, image: str = BASE, tag: str = TAG) -> Made:
    """Figure 2: ``sh`` in a container of ``image``, ``commands`` typed into it, the container committed as
    ``tag`` and removed. Its history will say ``sh``: the commands are nowhere but in the image's files.

    >>> by_hand(lab, session(1 << 20)).steps_run                 # doctest: +SKIP
    5
    """
    typed = "".join(c + "\n" for c in commands).encode()
    t0 = time.monotonic()
    c = lab.run(image, ["sh"], stdin=typed)
    try:
        if c.exit_code != 0:
            raise errors.FailedPrecondition(f"the commands typed into sh in a container of {image}",
                                            f"exited {c.exit_code}: {c.output.strip()[-300:]}",
                                            fix="check the commands")
        new = lab.commit(c, tag)
    finally:
        c.remove(force=True)
    return Made("hand", new, time.monotonic() - t0, len(commands), len(commands))


def by_recipe(lab: Lab, recipe: str, context: str | None = None, *, tag: str = TAG,
              progress: Callable[[str], Any] | None = None) -> Made:
    """``Lab.build`` of ``recipe``; the steps that ran are those not taken from the cache (``FROM`` of an
    image in the store counts as taken).

    >>> by_recipe(lab, "app/Labfile").steps_run                  # doctest: +SKIP
    6
    """
    t0 = time.monotonic()
    result = lab.build(recipe, context, tag=tag, progress=progress)
    seconds = time.monotonic() - t0
    return Made("recipe", result.id, seconds, len(result.steps), sum(not s.cached for s in result.steps))


def _explains(created_by: Sequence[str], needles: Sequence[str]) -> bool:
    return all(any(n in cb for cb in created_by) for n in needles)


def observe(lab: Lab, made: Made, phase: str, *, base_bytes: int, version: int, lib_version: int,
            data: int, tag: str = TAG) -> dict[str, Any]:
    """One row: the phase's time and steps, then the store (images, space) and the result (its lineage,
    what its history says, and whether it prints :func:`expected_output`)."""
    history = lab.history(tag)
    needles = [install_command(lib_version, data), "chmod 755", "app.sh", "app.conf"]
    out = lab.run(tag, ["/app/app.sh"], rm=True)
    used = lab.snapshotter.store_space().used_bytes
    return {"method": made.method, "phase": phase, "seconds": made.seconds, "steps": made.steps,
            "steps_run": made.steps_run, "images_in_store": len(lab.images(as_frame=False)),
            "bytes_stored": used, "bytes_added": used - base_bytes, "chain_depth": len(history),
            "explainable": _explains(history.created_by.tolist(), needles),
            "runs": out.exit_code == 0 and out.output.strip() == expected_output(version, lib_version)}


def prune(lab: Lab, method: str) -> Made:
    """``lab.prune()``, timed, as a phase of ``method``: it deletes the dangling images (a recipe's
    replaced steps; a hand chain has none, every image is the next one's parent)."""
    t0 = time.monotonic()
    lab.prune()
    return Made(method, lab.inspect(TAG)["id"], time.monotonic() - t0, 0, 0)


def trial(hand: Lab, recipe: Lab, *, change: str, data: int, context: str) -> list[dict[str, Any]]:
    """Both ways, each in its own Lab (busybox imported, nothing else): the first build, the one-line
    ``change``, then ``prune``; rows in that order (hand, recipe per phase). ``context`` is a directory for
    the recipe's build context (written here)."""
    change_session(change, data)                      # an unknown change fails before anything is made
    base = {id(lab): lab.snapshotter.store_space().used_bytes for lab in (hand, recipe)}
    version, lib_version = 1, 1
    rows = []

    def look(lab: Lab, made: Made, phase: str) -> None:
        rows.append(observe(lab, made, phase, base_bytes=base[id(lab)], version=version, lib_version=lib_version,
                            data=data))

    look(hand, by_hand(hand, session(data)), "first build")
    look(recipe, by_recipe(recipe, write_context(context, data=data), context), "first build")
    version, lib_version = (2, 1) if change == "app" else (1, 2)
    look(hand, by_hand(hand, change_session(change, data), image=TAG), "after change")
    look(recipe, by_recipe(recipe, write_context(context, version=version, lib_version=lib_version, data=data),
                           context), "after change")
    look(hand, prune(hand, "hand"), "after prune")
    look(recipe, prune(recipe, "recipe"), "after prune")
    return rows


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Medians per (backend, change, method, phase), warm-up dropped; ``explainable`` and ``runs`` must hold
    in every repetition."""
    d = df[~df.warmup] if "warmup" in df else df
    by = [c for c in ("backend", "change", "method", "phase") if c in d]
    cols = ["seconds", "steps", "steps_run", "images_in_store", "bytes_stored", "bytes_added", "chain_depth"]
    out = d.groupby(by)[cols].median()
    for col in ("explainable", "runs"):
        out[col] = d.groupby(by)[col].all()
    order = {v: i for i, v in enumerate(PHASES + METHODS + CHANGES)}
    return out.sort_index(key=lambda s: s.map(order) if s.name in ("phase", "method", "change") else s)


@experiment("recipe-vs-hand",
            title="one application by hand (figure 2) and by a recipe: lineage, space, time after a one-line change",
            params=[backend_param(("overlay",)),
                    Param("change", "choice", list(CHANGES), "the line that changes: app (the script) or dependency "
                          "(the install line)", choices=CHANGES, sweep=True),
                    Param("data", "size", "1M", "what the install line writes (a stand-in for a package)",
                          min=_BLOCK, max=256 * MIB)],
            columns={"method": "hand (sh in a container, commands typed, commit) or recipe (Lab.build of a Labfile)",
                     "phase": "first build, after change (one line), after prune",
                     "seconds": "the phase's machine work: container + commands + commit, the build, or prune",
                     "steps": "commands typed, or the recipe's steps (FROM included)",
                     "steps_run": "what ran: every typed command; the recipe's steps not taken from the cache",
                     "images_in_store": "images in the method's store", "bytes_stored": "the store's store_space()",
                     "bytes_added": "bytes_stored minus the store with only busybox",
                     "chain_depth": "images in the result's lineage, its base included",
                     "explainable": "the result's history names every command and file that made it",
                     "runs": "the result prints what the application should"},
            summary=summary)
def recipe_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """Per repetition two fresh Labs (hand, recipe) with busybox, one :func:`trial` in them."""
    rows = []
    for r in range(repeat + 1):
        base = tempfile.mkdtemp(prefix="recipe-", dir=ctx.root)
        try:
            opts = store_options(p["backend"], 32 * MIB + 4 * p["data"])
            with Lab(os.path.join(base, "hand"), p["backend"], **opts) as hand, \
                    Lab(os.path.join(base, "recipe"), p["backend"], **opts) as recipe:
                try:
                    for lab in (hand, recipe):
                        lab.import_image(BASE, tag=BASE)
                    rows += [{**row, "repeat": r} for row in trial(hand, recipe, change=p["change"], data=p["data"],
                                                                    context=os.path.join(base, "app"))]
                finally:
                    hand.reset()
                    recipe.reset()
        finally:
            shutil.rmtree(base, ignore_errors=True)
        ctx.tick(1)
    return rows
