"""The image store's main workflow over every snapshot backend that runs here.

busybox import -> container snapshot (labelled) -> write -> commit with created_by -> history / tree /
whatrequires / df -> rmi refused while used -> prune frees dangling -> nothing mounted afterwards.
"""
from __future__ import annotations

import os
import tarfile

import pytest

from labkit import errors
from labkit._sys import mounts as sysmounts
from labkit.images import CheckReport, ImageStore, Requirements, parse_reference
from labkit.snapshots import backend_status, open_snapshotter

OPTIONS = {"thin": {"data_size": "2G", "base_size": "256M"}, "btrfs": {"loop_size": "1G"},
           "reflink": {"loop_size": "1G"}}
_STATUS = {s.name: s for s in backend_status("/tmp")}
BACKENDS = [b for b in ("copy", "overlay", "btrfs", "reflink", "thin") if _STATUS[b].available]

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts")]


def _leftovers(path) -> list[str]:
    return [m.target for m in sysmounts.mountinfo() if m.target.startswith(str(path))]


@pytest.fixture
def store(request, tmp_path):
    backend = request.param
    sn = open_snapshotter(backend, tmp_path / "sn", **OPTIONS.get(backend, {}))
    st = ImageStore(tmp_path / "images", sn)
    try:
        yield st
    finally:
        st.close()
        sn.close()
        left = _leftovers(tmp_path)
        for t in left:
            sysmounts.umount(t, sysmounts.MNT_DETACH)
        assert not left, f"mounts left behind: {left}"


@pytest.mark.parametrize("store", BACKENDS, indirect=True)
def test_workflow(store: ImageStore, tmp_path) -> None:
    sn = store.sn
    base = store.import_busybox(tag="busybox")
    assert store.resolve("busybox:latest") == base == store.resolve(base[:12])
    assert store.inspect("busybox").size > 500_000          # the static binary at least

    # a container, as the runtime makes it
    mnt = sn.prepare("c1", f"img-{base}", labels={"labkit.container": "web"})
    target = tmp_path / "rootfs"
    target.mkdir()
    with mnt.mount(target):
        (target / "hello").write_bytes(os.urandom(100_000))
        os.sync()
        os.unlink(target / "etc" / "hostname")
        live = store.commit("c1", "live:v0", created_by="frozen commit")     # still mounted: c1 stays
        assert sn.stat("c1").kind.value == "active"
        assert store.inspect("live:v0").size == store.inspect("busybox").size + 100_000 - len("labkit\n")
        assert store.rmi("live:v0").deleted == (live,)
    with pytest.raises(errors.FailedPrecondition, match="web"):
        store.rmi("busybox")
    assert store.whatrequires("busybox") == Requirements(images=(), containers=("web",))

    app = store.commit("c1", "app:v1", created_by="sh -c 'echo > /hello'", comment="first")
    hist = store.history("app:v1")
    assert [h.created_by for h in hist] == ["sh -c 'echo > /hello'", "labkit import busybox"]
    assert hist[0].id == app and hist[1].short_id == base[:12]
    assert store.inspect("app:v1").size == store.inspect("busybox").size + 100_000 - len("labkit\n")

    # a second container on the new image, and an untagged image made from it
    sn.prepare("c2", f"img-{app}", labels={"labkit.container": "worker"})
    req = store.whatrequires("busybox")
    assert req == Requirements(images=(app,), containers=("worker",))
    text, data = store.tree()
    assert data[0].id == base and data[0].children[0].id == app
    assert data[0].children[0].containers == ("worker",)
    assert "app:v1" in text and "busybox:latest" in text

    df = {r.name: r for r in store.df()}
    layer_base = sn.usage(f"img-{base}").size
    layer_app = sn.usage(f"img-{app}").size
    if sn.name in ("copy", "overlay"):      # separate layers; on CoW backends c2 shares hello's extents
        assert layer_app >= 100_000 and layer_base > 0
    assert df[base[:12]].total == layer_base and df[base[:12]].shared == layer_base
    assert df[base[:12]].reclaimable == 0 and df[base[:12]].kind == "image"
    assert df[app[:12]].total == layer_base + layer_app
    assert df["worker"].total == layer_base + layer_app + sn.usage("c2").size
    assert df["worker"].exclusive == sn.usage("c2").size == df["worker"].reclaimable
    assert df["worker"].kind == "container" and df["worker"].snapshot == "c2"

    with pytest.raises(errors.FailedPrecondition, match="worker"):
        store.rmi("app:v1")
    with pytest.raises(errors.FailedPrecondition, match=app[:12]):
        store.rmi("busybox")
    # force cannot drop a snapshot that has a container: untag, mark, report
    res = store.rmi("app:v1", force=True)
    assert res.deleted == () and res.untagged == ("app:v1",) and res.kept_by
    assert store.inspect(app).removal_pending
    assert store.prune().deleted == ()          # still used by worker
    sn.remove("c2")
    layer_app = sn.usage(f"img-{app}").size
    pr = store.prune()
    assert pr.deleted == (app,) and pr.freed == layer_app and pr.removals[0].tags == ()
    assert [i.id for i in store.images()] == [base]

    # tags, export, prune -a
    store.tag("busybox", "base:v1")
    assert store.inspect(base).tags == ("base:v1", "busybox:latest")
    assert store.rmi("base:v1").untagged == ("base:v1",)
    out = tmp_path / "bb.tar"
    store.export("busybox", out)
    with tarfile.open(out) as tf:
        assert "bin/busybox" in tf.getnames()
    store.import_tar(out, tag="bb2")
    assert store.inspect("bb2").size == store.inspect("busybox").size
    assert store.prune(all=True).deleted and store.images() == []
    assert [i.name for i in sn.walk()] == []


@pytest.mark.parametrize("store", ["copy"], indirect=True)
def test_refs_and_failures(store: ImageStore, tmp_path) -> None:
    for bad in ("UPPER", "a:b:c", "x:" + "t" * 129, "-lead", "a//b", "a:-x"):
        with pytest.raises(errors.InvalidArgument):
            parse_reference(bad)
    with pytest.raises(errors.InvalidArgument, match="Bad"):
        store.import_busybox(tag="Bad")
    with pytest.raises(errors.NotFound, match=r"images\(\)"):
        store.resolve("nope")
    # a failing import leaves no snapshot and no row, and nothing mounted
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        tf.addfile(tarfile.TarInfo("ok"))
        tf.addfile(tarfile.TarInfo("../escape"))
    with pytest.raises(errors.InvalidArgument, match=r"\.\./escape"):
        store.import_tar(bad, tag="bad")
    assert list(store.sn.walk()) == [] and store.images() == []
    # ambiguous prefix
    a = store.import_tar(_tiny(tmp_path), tag="t1")
    b = store.import_tar(_tiny(tmp_path), tag="t2")
    extra = []
    while len({i[0] for i in [a, b, *extra]}) == len([a, b, *extra]):   # pigeonhole: at most 17 images
        extra.append(store.import_tar(_tiny(tmp_path)))
    first = [i[0] for i in [a, b, *extra]]
    dup = next(ch for ch in first if first.count(ch) > 1)
    with pytest.raises(errors.InvalidArgument, match="ambiguous"):
        store.resolve(dup)
    store.prune()
    # a tag moves to the newest image, the old one becomes dangling
    c = store.import_tar(_tiny(tmp_path), tag="t1")
    assert store.resolve("t1") == c and store.inspect(a).tags == ()
    plan = store.prune(dry_run=True)
    assert plan.dry_run and plan.deleted == (a,) and store.inspect(a).id == a
    assert store.prune().deleted == (a,)
    # commit is refused while the container's rootfs is mounted, and a bad tag consumes nothing
    m = store.sn.prepare("run1", f"img-{c}", labels={"labkit.container": "run1"})
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with m.mount(mnt):
        # a running (frozen) container keeps its snapshot; the image gets only the differences
        (mnt / "added").write_text("new")
        os.link(mnt / "added", mnt / "again")
        os.symlink("/f", mnt / "lnk")
        os.unlink(mnt / "f")
        live = store.commit("run1", "t3", created_by="frozen")
        assert store.sn.stat("run1").kind.value == "active"
        with store.mounted(live) as r:
            assert sorted(os.listdir(r)) == ["added", "again", "lnk"]
            assert os.path.samefile(os.path.join(r, "added"), os.path.join(r, "again"))
            assert os.readlink(os.path.join(r, "lnk")) == "/f"
        assert store.inspect(live).parent == c
        store.rmi(live)
        (mnt / "added").unlink()
        (mnt / "again").unlink()
        (mnt / "lnk").unlink()
    with pytest.raises(errors.InvalidArgument, match="BAD"):
        store.commit("run1", "BAD")
    assert store.sn.stat("run1").kind.value == "active"
    new = store.commit("run1", None, created_by="nothing")
    assert store.inspect(new).parent == c and store.inspect(new).tags == ()


def _tiny(tmp_path) -> str:
    p = tmp_path / "tiny.tar"
    if not p.exists():
        src = tmp_path / "tinysrc"
        src.mkdir()
        (src / "f").write_text("hi")
        with tarfile.open(p, "w") as tf:
            tf.add(src / "f", arcname="f")
    return str(p)


@pytest.mark.parametrize("store", [b for b in ("copy", "overlay") if b in BACKENDS], indirect=True)
def test_layer_and_dir_import(store: ImageStore, tmp_path) -> None:
    import io
    base = store.import_busybox(tag="busybox")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("etc/.wh.hostname", b""), ("bin/.wh..wh..opq", b""), ("bin/only", b"x")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    (tmp_path / "layer.tar").write_bytes(buf.getvalue())
    top = store.import_tar(tmp_path / "layer.tar", parent="busybox", tag="layered")
    assert store.history("layered")[1].id == base

    def look(root: str) -> None:
        assert not os.path.exists(os.path.join(root, "etc", "hostname"))
        assert os.listdir(os.path.join(root, "bin")) == ["only"]
        assert os.path.exists(os.path.join(root, "etc", "passwd"))
    with store.mounted(top) as r:
        look(r)

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("hi")
    os.chown(src / "d" / "f", 1234, 5678)
    os.chmod(src / "d" / "f", 0o4750)
    os.setxattr(src / "d" / "f", "user.lab", b"kit")
    img = store.import_dir(src, tag="fromdir")

    def same(root: str) -> None:
        st = os.lstat(os.path.join(root, "d", "f"))
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o4750)
        assert os.getxattr(os.path.join(root, "d", "f"), "user.lab") == b"kit"
    with store.mounted(img) as r:
        same(r)


@pytest.mark.parametrize("store", ["copy"], indirect=True)
def test_check_after_crash(store: ImageStore, tmp_path) -> None:
    sn = store.sn
    base = store.import_busybox(tag="busybox")
    gone = store.import_tar(_tiny(tmp_path), tag="gone")
    sn.remove(f"img-{gone}")                                                        # row without snapshot
    sn.prepare("imgbuild-deadbeef0000", None, labels={"labkit.image.build": "x"})   # died while filling
    sn.prepare("k", f"img-{base}")
    sn.commit("img-" + "0" * 64, "k", labels={"labkit.image.tag": "saved:1",        # died before the row
                                              "labkit.image.created_by": "make"})
    store.db.execute("UPDATE images SET size=-1 WHERE id=?", (base,))             # never measured
    os.makedirs(os.path.join(store.root, "tmp", "build-abc-x", "etc"))             # scratch dirs of a crash
    os.mkdir(os.path.join(store.root, "rootfs-old"))
    report = store.check()
    assert isinstance(report, CheckReport) and not report.ok
    assert len(report.problems) == 6 and len(report.repairs) == 6, report
    assert all(r.startswith("would ") for r in report.repairs)
    repairs = dict(report.rows())
    assert repairs["snapshot img-" + "0" * 64 + " has no image row"].startswith("would register snapshot")
    assert store.inspect("busybox").size is None
    fixed = store.check(repair=True)
    assert len(fixed.repairs) == 6 and fixed.unrepaired == (), fixed
    assert store.check() == CheckReport()
    # the orphan was adopted (never deleted: it may be a container's only copy), with its tag and provenance
    adopted = store.inspect("saved:1")
    assert adopted.id == "0" * 64 and adopted.parent == base and adopted.created_by == "make"
    assert adopted.size == store.inspect("busybox").size > 500_000
    assert sorted(i.name for i in sn.walk()) == sorted([f"img-{base}", "img-" + "0" * 64])
    assert os.listdir(os.path.join(store.root, "tmp")) == []
    assert not os.path.exists(os.path.join(store.root, "rootfs-old"))
    assert [i.id for i in store.images()] == [base, "0" * 64]


def _stopped_container(store: ImageStore, tmp_path, key: str = "c1") -> None:
    """A container snapshot on busybox with /data written, unmounted (a stopped container)."""
    m = store.sn.prepare(key, f"img-{store.resolve('busybox')}", labels={"labkit.container": key})
    mnt = tmp_path / f"mnt-{key}"
    mnt.mkdir()
    with m.mount(mnt):
        (mnt / "data").write_bytes(b"precious")


@pytest.mark.parametrize("store", ["copy"], indirect=True)
@pytest.mark.parametrize("step", ["register", "measure", "set_size", "interrupt"])
def test_commit_failure_after_snapshot_commit_loses_nothing(store: ImageStore, tmp_path, monkeypatch, step) -> None:
    """A failure at each step after the snapshot commit leaves the new image (at worst after check's
    repair), never neither it nor the container's data."""
    store.import_busybox(tag="busybox")
    _stopped_container(store, tmp_path)

    def boom(*a, **k):
        raise (KeyboardInterrupt if step == "interrupt" else OSError)("injected failure")
    target = {"register": "_register", "measure": "_measure", "set_size": "_set_size", "interrupt": "_register"}[step]
    monkeypatch.setattr(store, target, boom)
    if step in ("register", "interrupt"):
        with pytest.raises((errors.FailedPrecondition, KeyboardInterrupt)) as ei:
            store.commit("c1", "app:v1", created_by="write data")
        if step == "register":
            assert "check(repair=True)" in str(ei.value) and "\n" not in str(ei.value)
        monkeypatch.undo()
        assert store.check().problems and store.check(repair=True).repairs
    else:
        store.commit("c1", "app:v1", created_by="write data")
        monkeypatch.undo()
        assert store.inspect("app:v1").size is None          # registered, measured later
        assert "has no measured size" in store.check().problems[0]
        store.check(repair=True)
    info = store.inspect("app:v1")
    assert info.size == store.inspect("busybox").size + len("precious") and info.created_by == "write data"
    with store.mounted("app:v1") as r:
        assert open(os.path.join(r, "data"), "rb").read() == b"precious"
    assert store.check().ok


@pytest.mark.parametrize("store", ["copy"], indirect=True)
def test_commit_failure_before_snapshot_commit_keeps_container(store: ImageStore, tmp_path, monkeypatch) -> None:
    store.import_busybox(tag="busybox")
    _stopped_container(store, tmp_path)

    def boom(*a, **k):
        raise OSError("injected failure")
    monkeypatch.setattr(store.sn, "commit", boom)
    with pytest.raises(OSError):
        store.commit("c1", "app:v1")
    monkeypatch.undo()
    assert store.sn.stat("c1").kind.value == "active" and store.check().ok    # the old state
    assert len(store.images()) == 1
