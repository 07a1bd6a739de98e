"""``labkit build``: an image from a recipe (a Labfile, the Dockerfile subset of :mod:`labkit.images.recipe`).

Every step after ``FROM`` (but ``ARG``) leaves a committed image whose parent is the previous step's,
whose ``created_by`` is the instruction (variables substituted) and whose ``recipe`` is
``<file>:<line>`` (the snapshot label ``labkit.recipe``) — so ``history`` reads like the recipe and
``tree`` marks what a recipe made. ``COPY``, ``WORKDIR``, ``ENV``, ``LABEL``, ``USER``, ``CMD`` and
``ENTRYPOINT`` are done by the store itself; ``RUN`` needs a container, which this module does not know
how to make: the caller passes ``run_step(parent_id, argv, env, workdir, user) -> image_id``, a function
that runs ``argv`` in a container on ``parent_id`` and commits it (``Lab.build`` passes one made of
``Lab.run`` + ``Lab.commit``). The image store never imports the runtime.

**The step cache.** Each step has a key: sha256 of (the parent image id, the instruction after
substitution — for ``RUN`` with the build arguments in scope —, and for ``COPY`` the digest of the copied
files' paths, types, permission bits and contents, taken when the recipe is checked; the copy hashes
what it copies again and fails the step if the context changed meanwhile). A step whose key an existing
image carries (on the same parent) is not run again: ``---> Using cache``. Change one line and that step
gets a new key; its image is new, so every step after it has a new parent and runs again; the steps
before it come from the cache. ``no_cache=True`` runs everything (the images it makes serve later builds).

**Before anything is made** the whole recipe is checked: syntax, the base image, variables, and every
``COPY`` source (inside the context, no symlink followed); an error is one ``InvalidArgument`` naming
``<file>:<line>``. A failing ``RUN`` stops the build with the images made so far left as cache
(untagged: ``prune()`` removes them).

>>> result = build(store, "Labfile", ".", tag="app:v1", run_step=step)       # doctest: +SKIP
Step 1/3 : FROM busybox
 ---> 3f2a1b2c3d4e
Step 2/3 : COPY app.sh /app/
 ---> 5b3c1f9a2e7d (0.05 s)
Step 3/3 : RUN chmod 755 /app/app.sh
 ---> 9e8d7c6b5a4f (0.21 s)
Successfully built 9e8d7c6b5a4f in 0.4 s
Successfully tagged app:v1
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .. import errors
from .._sys.record import replace
from . import context as ctx
from .recipe import MAX_RECIPE, Instruction, exec_form, pairs, parse, usage, words
from .records import BuildResult, BuildStep, ImageConfig
from .reference import normalize

if TYPE_CHECKING:
    from .store import ImageStore

__all__ = ["build", "plan", "RunStep", "Step"]


class RunStep(Protocol):
    """Runs ``argv`` in a container on image ``parent`` (with ``env``, ``workdir``, ``user``), commits it
    and returns the new image's id (a child of ``parent``); raises if the command fails."""

    def __call__(self, parent: str, argv: list[str], env: dict[str, str], workdir: str, user: str) -> str: ...


@dataclass
class Step:
    """One planned step: the instruction, what it is as run (``text``), and the config after it."""

    number: int
    ins: Instruction
    text: str
    config: ImageConfig
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    dest: str = ""
    copy: ctx.CopyOptions = field(default_factory=ctx.CopyOptions)
    key_extra: str = ""


@dataclass
class Plan:
    """A checked recipe: the base (an image id, or None for scratch) and the steps after FROM."""

    path: str
    base: str | None
    base_text: str
    from_ins: Instruction
    steps: list[Step]
    total: int
    unused_args: list[str]


def _bad(where: str, why: str, fix: str | None = None) -> errors.InvalidArgument:
    return errors.InvalidArgument(where, why, fix=fix)


def _read_recipe(path: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise errors.NotFound(f"recipe {path!r}", fix="give a Labfile with -f, or put one in the context") from None
    if not os.path.isfile(path):
        raise errors.InvalidArgument(f"recipe {path!r}", "is not a regular file", fix="give a Labfile")
    if st.st_size > MAX_RECIPE:
        raise errors.InvalidArgument(f"recipe {path!r}", f"is {st.st_size} bytes, over {MAX_RECIPE}",
                                     fix="a recipe is a short text file")
    with open(path, "rb") as f:
        data = f.read(MAX_RECIPE + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidArgument(f"recipe {path!r}", "is not UTF-8 text", fix="save it as UTF-8") from None


def _env_dict(env: tuple[str, ...]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in env if "=" in e)


def _set_env(env: tuple[str, ...], updates: list[tuple[str, str]]) -> tuple[str, ...]:
    out = list(env)
    for k, v in updates:
        for i, e in enumerate(out):
            if e.split("=", 1)[0] == k:
                out[i] = f"{k}={v}"
                break
        else:
            out.append(f"{k}={v}")
    return tuple(out)


def _copy_flags(ws: list[str], where: str) -> tuple[ctx.CopyOptions, list[str]]:
    opts = ctx.CopyOptions()
    while ws and ws[0].startswith("--"):
        flag, _, value = ws.pop(0).partition("=")
        if flag == "--chown":
            m = re.fullmatch(r"(\d+)(?::(\d+))?", value)
            if not m:
                raise _bad(where, f"COPY --chown={value[:40]!r} is not UID[:GID]",
                           fix="labkit takes numeric ids, e.g. --chown=1000:1000")
            uid = int(m.group(1))
            opts = replace(opts, uid=uid, gid=int(m.group(2)) if m.group(2) else uid)
        elif flag == "--chmod":
            if not re.fullmatch(r"[0-7]{3,4}", value):
                raise _bad(where, f"COPY --chmod={value[:40]!r} is not an octal mode", fix="e.g. --chmod=755")
            opts = replace(opts, mode=int(value, 8))
        else:
            raise _bad(where, f"COPY {flag[:40]} is not in labkit's recipe subset",
                       fix="COPY takes --chown=UID[:GID] and --chmod=OCTAL")
    return opts, ws


def plan(store: ImageStore, recipe: str, context: str, build_args: dict[str, str] | None = None) -> Plan:
    """Parse and check the whole recipe against the store and the context; nothing is made."""
    path = os.fspath(recipe)
    instructions = parse(_read_recipe(path), path)
    if not instructions:
        raise errors.InvalidArgument(f"recipe {path!r}", "has no instructions", fix="start it with FROM image")
    given = dict(build_args or {})
    used: set[str] = set()
    globals_: dict[str, str | None] = {}
    i = 0
    while i < len(instructions) and instructions[i].keyword == "ARG":
        for name, default in _arg_decls(instructions[i], {k: v for k, v in globals_.items() if v is not None}):
            globals_[name] = given.get(name, default)
            if name in given:
                used.add(name)
        i += 1
    if i >= len(instructions) or instructions[i].keyword != "FROM":
        ins = instructions[min(i, len(instructions) - 1)]
        raise _bad(ins.where, f"{ins.keyword} before FROM", fix="a recipe starts with FROM (only ARG may come first)")
    frm = instructions[i]
    fw = words(frm.args, {k: v for k, v in globals_.items() if v is not None}, frm.where)
    if len(fw) != 1:
        if len(fw) == 3 and fw[1].upper() == "AS":
            raise _bad(frm.where, "FROM ... AS (multi-stage builds) is not in labkit's recipe subset",
                       fix="build each stage as its own recipe")
        raise _bad(frm.where, f"FROM takes one image, not {frm.args[:80]!r}", fix=usage("FROM"))
    if fw[0].startswith("--"):
        raise _bad(frm.where, f"FROM {fw[0][:40]} is not in labkit's recipe subset", fix=usage("FROM"))
    base: str | None = None
    if fw[0] != "scratch":
        try:
            base = store.resolve(fw[0])
        except errors.NotFound:
            raise _bad(frm.where, f"FROM {fw[0]!r}: no such image in the store",
                       fix="import it first (labkit image import busybox|debian|FILE) or build it") from None
        except errors.InvalidArgument as e:
            raise _bad(frm.where, f"FROM {fw[0][:80]!r} is not an image reference", fix=str(e)) from None
    config = store._config(base) if base else ImageConfig()
    scope: dict[str, str | None] = {}
    steps: list[Step] = []
    cmd_set = False
    total = len(instructions) - i        # steps are counted from FROM
    for ins in instructions[i + 1:]:
        kw, where = ins.keyword, ins.where
        args_env = {k: v for k, v in scope.items() if v is not None}
        env = {**args_env, **_env_dict(config.env)}         # ENV wins over ARG, as in Docker
        n = len(steps) + 2
        if kw == "FROM":
            raise _bad(where, "a second FROM (multi-stage builds) is not in labkit's recipe subset",
                       fix="build each stage as its own recipe")
        if kw == "ARG":
            for name, default in _arg_decls(ins, env):
                if name in given:
                    used.add(name)
                    scope[name] = given[name]
                else:
                    scope[name] = default if default is not None else globals_.get(name)
            steps.append(Step(n, ins, ins.text, config))
            continue
        if kw == "RUN":
            argv = exec_form(ins.args) or ["/bin/sh", "-c", ins.args]
            run_env = {**args_env, **_env_dict(config.env)}
            extra = " ".join(f"{k}={v}" for k, v in sorted(args_env.items()))
            steps.append(Step(n, ins, f"RUN {ins.args}", config, argv=argv, env=run_env, key_extra=extra))
            continue
        if kw in ("CMD", "ENTRYPOINT"):
            argv = exec_form(ins.args) or ["/bin/sh", "-c", ins.args]
            if kw == "CMD":
                config, cmd_set = replace(config, cmd=tuple(argv)), True
            else:
                config = replace(config, entrypoint=tuple(argv), cmd=config.cmd if cmd_set else ())
            steps.append(Step(n, ins, f"{kw} {json.dumps(argv)}", config))
            continue
        if kw == "ENV":
            kv = pairs(ins.args, env, where, kw)
            for k, _ in kv:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", k):
                    raise _bad(where, f"ENV name {k[:40]!r} is not a variable name", fix=usage(kw))
            config = replace(config, env=_set_env(config.env, kv))
            steps.append(Step(n, ins, "ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in kv), config))
            continue
        if kw == "LABEL":
            kv = pairs(ins.args, env, where, kw)
            labels = dict(x.split("=", 1) for x in config.labels if "=" in x)
            labels.update(kv)
            config = replace(config, labels=tuple(sorted(f"{k}={v}" for k, v in labels.items())))
            steps.append(Step(n, ins, "LABEL " + " ".join(f"{k}={json.dumps(v)}" for k, v in kv), config))
            continue
        if kw in ("WORKDIR", "USER"):
            ws = words(ins.args, env, where)
            if len(ws) != 1 or not ws[0]:
                raise _bad(where, f"{kw} takes one argument, not {ins.args[:80]!r}", fix=usage(kw))
            if kw == "USER":
                if not re.fullmatch(r"[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?", ws[0]):
                    raise _bad(where, f"USER {ws[0][:40]!r} is not name|uid[:group]", fix=usage(kw))
                config = replace(config, user=ws[0])
                steps.append(Step(n, ins, f"USER {ws[0]}", config))
            else:
                wd = posixpath.normpath(posixpath.join(config.workdir or "/", ws[0]))
                wd = "/" + wd.lstrip("/")
                config = replace(config, workdir=wd)
                steps.append(Step(n, ins, f"WORKDIR {wd}", config, dest=wd))
            continue
        # COPY
        form = exec_form(ins.args)
        ws = [words(w, env, where, split=False)[0] if w else "" for w in form] if form is not None \
            else words(ins.args, env, where)
        opts, ws = _copy_flags(ws, where)
        if len(ws) < 2:
            raise _bad(where, "COPY needs a source and a destination", fix=usage("COPY"))
        srcs = [ctx.check_source(context, s, where) for s in ws[:-1]]
        dest = ws[-1]
        full = dest if dest.startswith("/") else posixpath.join(config.workdir or "/", dest)
        full = "/" + posixpath.normpath(full).lstrip("/") + ("/" if dest.endswith("/") and full != "/" else "")
        flags = (f"--chown={opts.uid}:{opts.gid} " if (opts.uid, opts.gid) != (0, 0) else "") + \
            (f"--chmod={opts.mode:o} " if opts.mode is not None else "")
        text = "COPY " + flags + " ".join(s or "." for s in srcs) + " " + full
        steps.append(Step(n, ins, text, config, sources=srcs, dest=full, copy=opts,
                          key_extra=ctx.digest(context, srcs, where)))
    unused = sorted(set(given) - used)
    return Plan(path=path, base=base, base_text=f"FROM {fw[0]}", from_ins=frm, steps=steps, total=total,
                unused_args=unused)


def _arg_decls(ins: Instruction, env: dict[str, str]) -> list[tuple[str, str | None]]:
    out = []
    for w in words(ins.args, env, ins.where):
        name, sep, default = w.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise _bad(ins.where, f"ARG name {name[:40]!r} is not a variable name", fix=usage("ARG"))
        out.append((name, default if sep else None))
    return out


def _key(parent: str | None, text: str, extra: str = "") -> str:
    return hashlib.sha256(json.dumps([parent or "", text, extra]).encode()).hexdigest()


def _short(image_id: str) -> str:
    return image_id[:12]


def build(store: ImageStore, recipe: str | os.PathLike[str], context: str | os.PathLike[str] | None = None, *,
          tag: str | None = None, run_step: RunStep | Callable[..., str] | None = None,
          build_args: dict[str, str] | None = None, no_cache: bool = False,
          progress: Callable[[str], Any] | None = print) -> BuildResult:
    """Build ``recipe`` with ``context`` (default: the recipe's directory); tag the result ``tag``.

    ``run_step`` runs ``RUN`` steps (see the module docstring; without one, a recipe with ``RUN`` is
    refused before anything is made). ``build_args``: values for ``ARG``. ``progress`` gets one line at
    a time (``Step 2/5 : COPY ...``, `` ---> Using cache``, `` ---> <id> (0.05 s)``); None: silent.

    >>> build(store, "Labfile", tag="app:v1", run_step=step).id       # doctest: +SKIP
    """
    say = progress or (lambda _line: None)
    t0 = time.monotonic()
    recipe_path = os.path.abspath(os.fspath(recipe))
    ctx_dir = os.path.abspath(os.fspath(context)) if context is not None else os.path.dirname(recipe_path)
    if not os.path.isdir(ctx_dir):
        raise errors.NotFound(f"build context {ctx_dir!r}", fix="give an existing directory")
    ref = normalize(tag) if tag else None
    p = plan(store, os.fspath(recipe), ctx_dir, build_args)
    if run_step is None:
        runs = [s for s in p.steps if s.ins.keyword == "RUN"]
        if runs:
            raise _bad(runs[0].ins.where, "RUN needs a container, and no runner was given",
                       fix="build through the Lab (Lab.build or `labkit build`), which runs steps in containers")
    for name in p.unused_args:
        say(f"[warning] build argument {name} is not declared by an ARG of {p.path}")
    label = f"{recipe_path}:"
    steps: list[BuildStep] = []
    say(f"Step 1/{p.total} : {p.base_text}")
    t = time.monotonic()
    current = p.base
    from_cached = True
    if current is None:               # FROM scratch: an empty image, made once and then cached
        key = _key(None, "FROM scratch")
        current = None if no_cache else store._cached(None, key)
        if current is not None:
            say(" ---> Using cache")
        else:
            from_cached = False
            current = store._build(lambda _t: None, parent=None, tag=None, created_by="FROM scratch",
                                   config=ImageConfig(), recipe=f"{label}{p.from_ins.line}", build_key=key, size=0)
    say(f" ---> {_short(current)}")
    steps.append(BuildStep(1, f"{label}{p.from_ins.line}", p.base_text, current, from_cached,
                           round(time.monotonic() - t, 3)))
    for s in p.steps:
        say(f"Step {s.number}/{p.total} : {s.text}")
        t = time.monotonic()
        where = f"{label}{s.ins.line}"
        kw = s.ins.keyword
        if kw == "ARG":
            say(f" ---> {_short(current)}")
            steps.append(BuildStep(s.number, where, s.text, current, True, 0.0))
            continue
        extra = s.key_extra              # COPY: the digest of the sources, taken when the plan was checked
        key = _key(current, s.text, extra)
        hit = None if no_cache else store._cached(current, key)
        if hit is not None:
            current = hit
            say(" ---> Using cache")
            say(f" ---> {_short(current)}")
            steps.append(BuildStep(s.number, where, s.text, current, True, round(time.monotonic() - t, 3)))
            continue
        try:
            current = _run(store, s, current, key, where, ctx_dir, extra, run_step)
        except errors.LabkitError as e:
            if isinstance(e, errors.InvalidArgument) and str(e).startswith(s.ins.where):
                raise
            raise type(e)(s.ins.where, f"{s.text[:200]}: {' '.join(str(e).split())}") from e
        dt = time.monotonic() - t
        say(f" ---> {_short(current)} ({dt:.2f} s)")
        steps.append(BuildStep(s.number, where, s.text, current, False, round(dt, 3)))
    if ref:
        store.tag(current, ref)
    total = time.monotonic() - t0
    say(f"Successfully built {_short(current)} in {total:.1f} s")
    if ref:
        say(f"Successfully tagged {ref}")
    return BuildResult(id=current, short_id=_short(current), tag=ref or "", steps=tuple(steps), seconds=round(total, 3))


def _run(store: ImageStore, s: Step, parent: str, key: str, where: str, ctx_dir: str, digest: str,
         run_step: Callable[..., str] | None) -> str:
    """Make the image of one step (not cached)."""
    kw = s.ins.keyword
    if kw == "RUN":
        assert run_step is not None
        cfg = s.config
        new = run_step(parent, list(s.argv), dict(s.env), cfg.workdir or "/", cfg.user)
        if not isinstance(new, str) or store._row(store.resolve(new))["parent"] != parent:
            raise errors.FailedPrecondition(f"runner of {s.ins.where}", f"returned {str(new)[:20]!r}, not a child "
                                            f"image of {parent[:12]}", fix="run_step must commit the container")
        new = store.resolve(new)
        store._annotate(new, created_by=s.text, recipe=where, build_key=key)
        return new
    if kw == "COPY":
        def fill(target: str) -> None:
            got = ctx.copy_into(ctx_dir, s.sources, target, s.dest, s.copy, s.ins.where)
            if got != digest:
                raise _bad(s.ins.where, "the build context changed while it was copied",
                           fix="build again when nothing writes to the context")
        return store._build(fill, parent=parent, tag=None, created_by=s.text, config=s.config, recipe=where,
                            build_key=key)
    size = store._row(parent)["size"]

    def metadata(target: str) -> None:       # the parent's content; WORKDIR makes its directory
        if kw == "WORKDIR":
            root_fd = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.close(ctx._mkdirs(root_fd, s.dest, s.ins.where))
            finally:
                os.close(root_fd)
    return store._build(metadata, parent=parent, tag=None, created_by=s.text, config=s.config, recipe=where,
                        build_key=key, size=size if size is not None and size >= 0 else None)
