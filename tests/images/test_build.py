"""Recipes: ``ImageStore.build`` step by step, its cache, COPY's confinement, one-line errors, and the whole
thing through a Lab (RUN in real containers) and through the CLI verbs of ``labkit.images.cli``.

``lab_build`` below goes through ``Lab.build``: a ``run_step`` made of ``Lab.run`` + ``Lab.commit``.
"""
from __future__ import annotations

import argparse
import json
import os
import stat
from contextlib import contextmanager

import pytest

from labkit import errors
from labkit._sys import mounts as sysmounts
from labkit.images import BuildResult, ImageStore
from labkit.images import context as ctxmod
from labkit.images.cli import register_build, register_save
from labkit.snapshots import open_snapshotter

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts")]

APP = "#!/bin/sh\necho \"hello from $GREETING\"\n"
RECIPE = """\
# a tiny app on busybox
FROM busybox
ARG VERSION=1
ENV GREETING="app v${VERSION}" \\
    MODE=demo
WORKDIR /app
COPY app.sh ./
RUN chmod 755 app.sh
LABEL org.example.version=$VERSION
CMD ["/app/app.sh"]
"""


@pytest.fixture
def store(tmp_path):
    sn = open_snapshotter("overlay", tmp_path / "sn")
    st = ImageStore(tmp_path / "images", sn)
    try:
        yield st
    finally:
        st.close()
        sn.close()
        left = [m.target for m in sysmounts.mountinfo() if m.target.startswith(str(tmp_path))]
        for t in reversed(left):
            sysmounts.umount(t, sysmounts.MNT_DETACH)
        assert not left, f"mounts left behind: {left}"


@pytest.fixture
def ctx(tmp_path):
    d = tmp_path / "ctx"
    d.mkdir()
    (d / "app.sh").write_text(APP)
    os.chmod(d / "app.sh", 0o644)
    (d / "Labfile").write_text(RECIPE)
    return d


def fake_runner(store: ImageStore, calls: list):
    """A run_step without containers: records the call in /ran.json of a child image."""
    def run_step(parent, argv, env, workdir, user):
        calls.append((argv, env, workdir, user))
        body = json.dumps({"argv": argv, "env": env, "workdir": workdir, "user": user})
        return store._build(lambda t: open(os.path.join(t, "ran.json"), "w").write(body), parent=parent, tag=None,
                            created_by=" ".join(argv))
    return run_step


def _build(store, ctx, calls=None, **kw) -> tuple[BuildResult, list[str]]:
    lines: list[str] = []
    r = store.build(ctx / "Labfile", ctx, run_step=fake_runner(store, calls if calls is not None else []),
                    progress=lines.append, **kw)
    return r, lines


def test_steps_history_tree_and_config(store: ImageStore, ctx) -> None:
    base = store.import_busybox(tag="busybox")
    calls: list = []
    r, lines = _build(store, ctx, calls, tag="app:v1")
    assert lines[0] == "Step 1/8 : FROM busybox" and lines[1] == f" ---> {base[:12]}"
    assert "Step 3/8 : ENV GREETING=\"app v1\" MODE=\"demo\"" in lines
    assert "Step 5/8 : COPY app.sh /app/" in lines and "Step 6/8 : RUN chmod 755 app.sh" in lines
    assert [ln for ln in lines if ln.startswith(" ---> ") and ln.endswith(" s)")]                 # elapsed seconds
    assert lines[-2].startswith(f"Successfully built {r.short_id} in ") and lines[-1] == "Successfully tagged app:v1"
    assert store.resolve("app:v1") == r.id and r.tag == "app:v1" and r.cached == 2               # FROM and ARG
    assert calls == [(["/bin/sh", "-c", "chmod 755 app.sh"],
                      {"VERSION": "1", "GREETING": "app v1", "MODE": "demo"}, "/app", "")]
    hist = store.history("app:v1")
    assert [h.created_by for h in hist] == ['CMD ["/app/app.sh"]', 'LABEL org.example.version="1"',
                                            "RUN chmod 755 app.sh", "COPY app.sh /app/", "WORKDIR /app",
                                            'ENV GREETING="app v1" MODE="demo"', "labkit import busybox"]
    recipe = str(ctx / "Labfile")
    assert [h.recipe for h in hist] == [f"{recipe}:{n}" for n in (10, 9, 8, 7, 6, 4)] + [""]
    info = store.inspect("app:v1")
    assert info.cmd == ("/app/app.sh",) and info.workdir == "/app" and info.labels == ("org.example.version=1",)
    assert info.env[-2:] == ("GREETING=app v1", "MODE=demo")
    with store.mounted("app:v1") as root:
        st = os.stat(os.path.join(root, "app", "app.sh"))
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o644, 0, 0)            # COPY: 0:0, its mode
        assert open(os.path.join(root, "app", "app.sh")).read() == APP
        assert os.path.exists(os.path.join(root, "ran.json"))
    text, _ = store.tree()
    assert "recipe=Labfile:10" in text and "recipe=Labfile:7" in text
    assert "recipe=" not in text.splitlines()[0]                                     # busybox: an import


def test_cache_rules(store: ImageStore, ctx) -> None:
    store.import_busybox(tag="busybox")
    first, _ = _build(store, ctx, tag="app:v1")
    again, lines = _build(store, ctx, tag="app:v1")
    assert again.id == first.id and again.cached == 8 and lines.count(" ---> Using cache") == 6
    ids = [s.image for s in first.steps]
    # one line changed: what precedes it comes from the cache, it and what follows run again
    (ctx / "Labfile").write_text(RECIPE.replace("LABEL org.example.version=$VERSION", "LABEL org.example.version=2"))
    r, _ = _build(store, ctx)
    assert [s.cached for s in r.steps] == [True] * 6 + [False] * 2
    assert [s.image for s in r.steps][:6] == ids[:6] and r.steps[6].image != ids[6]
    (ctx / "Labfile").write_text(RECIPE)
    # the copied file: its content and its mode count, its mtime does not
    os.utime(ctx / "app.sh", (1, 1))
    assert _build(store, ctx)[0].id == first.id
    os.chmod(ctx / "app.sh", 0o600)
    r, _ = _build(store, ctx)
    assert [s.cached for s in r.steps] == [True] * 4 + [False] * 4
    os.chmod(ctx / "app.sh", 0o644)
    (ctx / "app.sh").write_text(APP + "# more\n")
    assert [s.cached for s in _build(store, ctx)[0].steps] == [True] * 4 + [False] * 4
    (ctx / "app.sh").write_text(APP)
    # a build argument changes every step that uses it (and, through its parent, all after)
    calls: list = []
    r, _ = _build(store, ctx, calls, build_args={"VERSION": "2"})
    assert [s.cached for s in r.steps] == [True, True] + [False] * 6 and calls[0][1]["VERSION"] == "2"
    # --no-cache: everything anew; the tag moves to the new image
    r, lines = _build(store, ctx, tag="app:v1", no_cache=True)
    assert r.cached == 2 and " ---> Using cache" not in lines and store.resolve("app:v1") == r.id != first.id
    # unused build arguments are reported
    _, lines = _build(store, ctx, build_args={"NOPE": "1"})
    assert lines[0] == f"[warning] build argument NOPE is not declared by an ARG of {ctx / 'Labfile'}"
    # the old chains are dangling now: prune removes them and says what each freed
    before = len(store.images())
    pruned = store.prune()
    assert pruned.deleted and len(store.images()) == before - len(pruned.deleted)
    assert store.resolve("app:v1") == r.id


def test_copy_semantics_and_confinement(store: ImageStore, tmp_path) -> None:
    base = store.import_busybox(tag="busybox")
    hostdir = tmp_path / "host"
    hostdir.mkdir()

    def links(t: str) -> None:      # links in the image that point out of it, if followed on the host
        os.symlink(str(hostdir), os.path.join(t, "abs"))
        os.symlink("../../../../../../../../" + str(hostdir).lstrip("/"), os.path.join(t, "rel"))
        os.symlink("usr/bin", os.path.join(t, "ubin"))
    store._build(links, parent=base, tag="links:1", created_by="links")
    c = tmp_path / "c"
    (c / "tree" / "sub").mkdir(parents=True)
    (c / "tree" / "sub" / "f").write_text("f")
    os.chmod(c / "tree" / "sub", 0o750)
    (c / "tree" / "x.sh").write_text("x")
    os.chmod(c / "tree" / "x.sh", 0o4755)                      # setuid is not copied
    os.symlink("x.sh", c / "tree" / "link")
    (c / "one").write_text("1")
    (c / "two").write_text("2")
    (c / "Labfile").write_text(
        "FROM links:1\nCOPY tree /opt/\nCOPY one /etc/\nCOPY one two /multi/\n"
        "COPY --chown=1000:1001 --chmod=700 one /own\n"
        "COPY one /abs/\nCOPY two /rel/in/\nCOPY one /ubin/one\nCOPY tree/sub ./s2\n")
    r = store.build(c / "Labfile", c, tag="copy:1", progress=None)
    assert os.listdir(hostdir) == []                           # nothing followed a link out of the image
    with store.mounted("copy:1") as root:
        def st(p):
            return os.lstat(os.path.join(root, p))
        assert open(os.path.join(root, "opt/sub/f")).read() == "f" and stat.S_IMODE(st("opt/sub").st_mode) == 0o750
        assert stat.S_IMODE(st("opt/x.sh").st_mode) == 0o755 and os.readlink(os.path.join(root, "opt/link")) == "x.sh"
        assert open(os.path.join(root, "etc/one")).read() == "1" and os.path.exists(os.path.join(root, "etc/passwd"))
        assert sorted(os.listdir(os.path.join(root, "multi"))) == ["one", "two"]
        assert (st("own").st_uid, st("own").st_gid, stat.S_IMODE(st("own").st_mode)) == (1000, 1001, 0o700)
        assert open(os.path.join(root, str(hostdir).lstrip("/"), "one")).read() == "1"        # /abs/ inside
        assert open(os.path.join(root, str(hostdir).lstrip("/"), "in", "two")).read() == "2"  # /rel/ inside
        assert open(os.path.join(root, "usr/bin/one")).read() == "1"                         # /ubin -> usr/bin
        assert open(os.path.join(root, "s2/f")).read() == "f"                                 # relative to WORKDIR /
    assert len(r.steps) == 9


def _bad_ctx(tmp_path, recipe: str):
    c = tmp_path / "bad"
    c.mkdir(exist_ok=True)
    (c / "ok").write_text("ok")
    if not os.path.lexists(c / "out"):
        os.symlink("/etc/passwd", c / "out")
        os.symlink("/etc", c / "dirlink")
        os.mkfifo(c / "fifo")
    (c / "Labfile").write_text(recipe)
    return c


@pytest.mark.parametrize("recipe,line,fragment", [
    ("FROM busybox\nCOPY ../etc/passwd /x\n", 2, "COPY source '../etc/passwd' is outside the build context"),
    ("FROM busybox\nCOPY ok/../../x /x\n", 2, "is outside the build context"),
    ("FROM busybox\nCOPY out /x\n", 2, "COPY source 'out' is a symlink"),
    ("FROM busybox\nCOPY dirlink/passwd /x\n", 2, "goes through 'dirlink', which is a symlink"),
    ("FROM busybox\nCOPY missing /x\n", 2, "COPY source 'missing' is not in the build context"),
    ("FROM busybox\nCOPY fifo /x\n", 2, "COPY source 'fifo' is a FIFO"),
    ("FROM busybox\nRUN true\nCOPY . /x\n", 3, "COPY source 'fifo' is a FIFO"),    # found before RUN runs
    ("FROM busybox\nCOPY ok\n", 2, "COPY needs a source and a destination"),
    ("FROM busybox\nCOPY --from=x ok /y\n", 2, "COPY --from is not in labkit's recipe subset"),
    ("FROM busybox\nCOPY --chown=www ok /y\n", 2, "is not UID[:GID]"),
    ("FROM nope:1\n", 1, "FROM 'nope:1': no such image in the store"),
    ("RUN true\nFROM busybox\n", 1, "RUN before FROM"),
    ("FROM busybox AS b\n", 1, "multi-stage builds"),
    ("FROM busybox\nRUN true\nFROM busybox\n", 3, "a second FROM"),
    ("FROM busybox\nENV 1A=x\n", 2, "ENV name '1A' is not a variable name"),
    ("FROM busybox\nENV A='x\n", 2, "unterminated '"),
    ("FROM busybox\nUSER a b\n", 2, "USER takes one argument"),
    ("FROM busybox\n\nRUN true\n", 3, "RUN needs a container, and no runner was given"),
    ("\n\nFROM busybox\nHEALTHCHECK NONE\n", 4, "HEALTHCHECK is not in labkit's recipe subset"),
])
def test_invalid_recipes_are_one_line_and_make_nothing(store: ImageStore, tmp_path, recipe, line, fragment) -> None:
    store.import_busybox(tag="busybox")
    before = store.images()
    c = _bad_ctx(tmp_path, recipe)
    with pytest.raises(errors.InvalidArgument) as ei:
        store.build(c / "Labfile", c, tag="x:1", progress=None)
    msg = str(ei.value)
    assert msg.startswith(f"{c / 'Labfile'}:{line}: ") and fragment in msg and "\n" not in msg, msg
    assert store.images() == before


def test_run_failure_context_change_and_scratch(store: ImageStore, ctx, tmp_path, monkeypatch) -> None:
    store.import_busybox(tag="busybox")

    def failing(parent, argv, env, workdir, user):
        raise errors.FailedPrecondition(f"command {argv!r}", "exited with 3", fix="fix the RUN line")
    with pytest.raises(errors.FailedPrecondition) as ei:
        store.build(ctx / "Labfile", ctx, tag="app:v1", run_step=failing, progress=None)
    msg = str(ei.value)
    assert msg.startswith(f"{ctx / 'Labfile'}:8: RUN chmod 755 app.sh: command") and "exited with 3" in msg
    made = [i for i in store.images() if i.recipe]
    assert len(made) == 3 and not store.images()[-1].tags               # ENV, WORKDIR, COPY: kept as cache
    assert len(store.prune().deleted) == 3                               # untagged: prune removes them
    # the context changes between its digest and the copy: the step fails, the image is thrown away
    real = ctxmod.digest
    monkeypatch.setattr(ctxmod, "digest", lambda *a: real(*a)[:-4] + "0000")
    with pytest.raises(errors.InvalidArgument, match=r"Labfile:7: the build context changed while it was copied"):
        _build(store, ctx)
    monkeypatch.undo()
    assert store.check().ok and not [i for i in store.sn.walk("kind==active")]
    # FROM scratch: an empty image made once, then taken from the cache
    s = tmp_path / "s"
    s.mkdir()
    (s / "hello").write_text("hi")
    (s / "Labfile").write_text("FROM scratch\nCOPY hello /\nENTRYPOINT [\"/hello\"]\n")
    one = store.build(s / "Labfile", s, progress=None)
    two = store.build(s / "Labfile", s, progress=None)
    assert one.id == two.id and two.cached == 3 and not one.steps[0].cached
    with store.mounted(one.id) as root:
        assert os.listdir(root) == ["hello"]
    assert store.inspect(one.id).entrypoint == ("/hello",) and store.inspect(one.id).cmd == ()


# ---- through a Lab: RUN in real containers ---------------------------------------------------------------
def lab_build(lab, recipe, context=None, **kw):
    """``Lab.build``: RUN steps run as ``Lab.run`` (no network, the image's entrypoint ignored) and are
    committed with ``Lab.commit``."""
    return lab.build(recipe, context, **kw)


class _CliLab:
    """A Lab with the two methods the lead adds (``build``, ``save``), for the CLI harness."""

    def __init__(self, root: str) -> None:
        from labkit import Lab
        self.lab = Lab(root, "overlay")

    def build(self, recipe, context=None, **kw):
        return lab_build(self.lab, recipe, context, **kw)

    def save(self, ref, path, **kw):
        return self.lab.store.save(ref, path, **kw)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lab.close()


def test_lab_build_run_and_rebuild(tmp_path, ctx) -> None:
    from labkit import Lab
    with Lab(str(tmp_path / "lab"), "overlay") as lab:
        try:
            lab.import_image("busybox", tag="busybox")
            lines: list[str] = []
            r = lab_build(lab, ctx / "Labfile", ctx, tag="app:v1", progress=lines.append)
            assert lab.run("app:v1", rm=True).output == "hello from app v1\n"
            with lab.store.mounted("app:v1") as root:
                assert stat.S_IMODE(os.stat(os.path.join(root, "app/app.sh")).st_mode) == 0o755   # RUN chmod
            assert lab.history("app:v1", as_frame=False)[2]["created_by"] == "RUN chmod 755 app.sh"
            # one line changed after the RUN: the RUN comes from the cache
            (ctx / "Labfile").write_text(RECIPE.replace('CMD ["/app/app.sh"]',
                                                        'CMD ["sh", "-c", "/app/app.sh; echo bye"]'))
            again = lab_build(lab, ctx / "Labfile", ctx, tag="app:v1", progress=None)
            assert [s.cached for s in again.steps] == [True] * 7 + [False]
            assert lab.run("app:v1", rm=True).output == "hello from app v1\nbye\n"
            assert [p["freed_bytes"] >= 0 for p in lab.prune(as_frame=False)] == [True]        # the old CMD image
            # a failing RUN: one line naming the recipe line, its output shown, no container left
            (ctx / "Labfile").write_text("FROM busybox\nRUN echo oops; exit 3\n")
            out: list[str] = []
            with pytest.raises(errors.FailedPrecondition, match=r"Labfile:2: RUN echo oops; exit 3: .*exited with 3"):
                lab_build(lab, ctx / "Labfile", ctx, progress=out.append)
            assert "oops" in out and lab.ps(as_frame=False) == []
            assert [i.name for i in lab.sn.walk("kind==active")] == []
            assert r.id != again.id
        finally:
            lab.reset()


def test_cli_build_and_save(tmp_path, ctx, capsys) -> None:
    root = str(tmp_path / "lab")

    @contextmanager
    def open_lab(args):
        with _CliLab(root) as lab:
            yield lab
    p = argparse.ArgumentParser(prog="labkit")
    sub = p.add_subparsers(dest="command")
    register_build(sub, open_lab=open_lab)
    img = sub.add_parser("image")
    register_save(img.add_subparsers(dest="image_command"), open_lab=open_lab)

    def run(*argv: str) -> int:
        args = p.parse_args(list(argv))
        return args.func(args)
    with _CliLab(root) as lab:
        lab.lab.import_image("busybox", tag="busybox")
    try:
        assert run("build", "-t", "app:v1", str(ctx)) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "Step 1/8 : FROM busybox" and out[-1] == "Successfully tagged app:v1"
        assert run("build", "-q", "-f", str(ctx / "Labfile"), "--build-arg", "VERSION=3", str(ctx)) == 0
        quiet = capsys.readouterr().out.split()
        assert len(quiet) == 1 and len(quiet[0]) == 64
        assert run("image", "save", "app:v1", "-o", str(tmp_path / "app.tar")) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith(f"{tmp_path / 'app.tar'}: oci-archive, 4 layers, ") and line.endswith(" as app:v1")
        assert run("image", "save", "app:v1", "-o", str(tmp_path / "d.tar"), "--format", "docker-archive") == 0
        assert "docker-archive" in capsys.readouterr().out
        with pytest.raises(errors.InvalidArgument, match="writes image archives to files"):
            run("image", "save", "app:v1", "-o", "-")
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(errors.NotFound, match="write a Labfile there, or give one with -f"):
            run("build", str(empty))
    finally:
        with _CliLab(root) as lab:
            lab.lab.reset()
