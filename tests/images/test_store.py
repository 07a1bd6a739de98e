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
from labkit.images import ImageStore, parse_reference
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
    assert store.inspect("busybox")["size"] > 500_000          # the static binary at least

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
        assert store.inspect("live:v0")["size"] == store.inspect("busybox")["size"] + 100_000 - len("labkit\n")
        assert store.rmi("live:v0")["deleted"] == [live]
    with pytest.raises(errors.FailedPrecondition, match="web"):
        store.rmi("busybox")
    assert store.whatrequires("busybox") == {"images": [], "containers": ["web"]}

    app = store.commit("c1", "app:v1", created_by="sh -c 'echo > /hello'", comment="first")
    hist = store.history("app:v1")
    assert [h["created_by"] for h in hist] == ["sh -c 'echo > /hello'", "labkit import busybox"]
    assert hist[0]["id"] == app[:12] and hist[1]["id"] == base[:12]
    assert store.inspect("app:v1")["size"] == store.inspect("busybox")["size"] + 100_000 - len("labkit\n")

    # a second container on the new image, and an untagged image made from it
    sn.prepare("c2", f"img-{app}", labels={"labkit.container": "worker"})
    req = store.whatrequires("busybox")
    assert req == {"images": [app[:12]], "containers": ["worker"]}
    text, data = store.tree()
    assert data[0]["id"] == base[:12] and data[0]["children"][0]["id"] == app[:12]
    assert data[0]["children"][0]["containers"] == ["worker"]
    assert "app:v1" in text and "busybox:latest" in text

    df = store.df().set_index("name")
    layer_base = sn.usage(f"img-{base}").size
    layer_app = sn.usage(f"img-{app}").size
    if sn.name in ("copy", "overlay"):      # separate layers; on CoW backends c2 shares hello's extents
        assert layer_app >= 100_000 and layer_base > 0
    assert df.loc[base[:12], "total"] == layer_base and df.loc[base[:12], "shared"] == layer_base
    assert df.loc[base[:12], "reclaimable"] == 0
    assert df.loc[app[:12], "total"] == layer_base + layer_app
    assert df.loc["worker", "total"] == layer_base + layer_app + sn.usage("c2").size
    assert df.loc["worker", "exclusive"] == sn.usage("c2").size == df.loc["worker", "reclaimable"]

    with pytest.raises(errors.FailedPrecondition, match="worker"):
        store.rmi("app:v1")
    with pytest.raises(errors.FailedPrecondition, match=app[:12]):
        store.rmi("busybox")
    # force cannot drop a snapshot that has a container: untag, mark, report
    res = store.rmi("app:v1", force=True)
    assert res["deleted"] == [] and res["untagged"] == ["app:v1"] and res["kept_by"]
    assert store.inspect(app)["removal_pending"]
    assert store.prune()["deleted"] == []          # still used by worker
    sn.remove("c2")
    layer_app = sn.usage(f"img-{app}").size
    pr = store.prune()
    assert pr["deleted"] == [app] and pr["freed"] == layer_app
    assert store.images()["id"].tolist() == [base[:12]]

    # tags, export, prune -a
    store.tag("busybox", "base:v1")
    assert sorted(store.inspect(base)["tags"]) == ["base:v1", "busybox:latest"]
    assert store.rmi("base:v1")["untagged"] == ["base:v1"]
    out = tmp_path / "bb.tar"
    store.export("busybox", out)
    with tarfile.open(out) as tf:
        assert "bin/busybox" in tf.getnames()
    store.import_tar(out, tag="bb2")
    assert store.inspect("bb2")["size"] == store.inspect("busybox")["size"]
    assert store.prune(all=True)["deleted"] and store.images().empty
    assert [i.name for i in sn.walk()] == []


@pytest.mark.parametrize("store", ["copy"], indirect=True)
def test_refs_and_failures(store: ImageStore, tmp_path) -> None:
    for bad in ("UPPER", "a:b:c", "x:" + "t" * 129, "-lead", "a//b", "a:-x"):
        with pytest.raises(errors.InvalidArgument):
            parse_reference(bad)
    with pytest.raises(errors.InvalidArgument, match="Bad"):
        store.import_busybox(tag="Bad")
    with pytest.raises(errors.NotFound, match="images()"):
        store.resolve("nope")
    # a failing import leaves no snapshot and no row, and nothing mounted
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        tf.addfile(tarfile.TarInfo("ok"))
        tf.addfile(tarfile.TarInfo("../escape"))
    with pytest.raises(errors.InvalidArgument, match=r"\.\./escape"):
        store.import_tar(bad, tag="bad")
    assert list(store.sn.walk()) == [] and store.images().empty
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
    assert store.resolve("t1") == c and store.inspect(a)["tags"] == []
    assert store.prune()["deleted"] == [a]
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
        assert store.inspect(live)["parent"] == c
        store.rmi(live)
        (mnt / "added").unlink()
        (mnt / "again").unlink()
        (mnt / "lnk").unlink()
    with pytest.raises(errors.InvalidArgument, match="BAD"):
        store.commit("run1", "BAD")
    assert store.sn.stat("run1").kind.value == "active"
    new = store.commit("run1", None, created_by="nothing")
    assert store.inspect(new)["parent"] == c and store.inspect(new)["tags"] == []


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
    assert store.history("layered")[1]["id"] == base[:12]

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
def test_check_after_crash(store: ImageStore) -> None:
    sn = store.sn
    store.import_busybox(tag="busybox")
    sn.prepare("imgbuild-deadbeef0000", None, labels={"labkit.image.build": "x"})   # died while filling
    sn.prepare("k", None)
    sn.commit("img-" + "0" * 64, "k")                                              # died before the row
    assert len(store.check()) == 2
    assert len(store.check(repair=True)) == 2 and store.check() == []
    assert [i.name for i in sn.walk()] == [f"img-{store.resolve('busybox')}"]


@pytest.mark.parametrize("store", [b for b in ("overlay",) if b in BACKENDS], indirect=True)
def test_docker_save_import(store: ImageStore, tmp_path) -> None:
    import io
    import json

    def layer(members) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for name, data in members:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        return buf.getvalue()
    l1 = layer([("etc/os", b"base"), ("etc/gone", b"x"), ("var/cache/a", b"a")])
    l2 = layer([("etc/.wh.gone", b""), ("var/cache/.wh..wh..opq", b""), ("app", b"bin")])
    outer = tmp_path / "save.tar"
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["demo:1"], "Layers": ["l1/layer.tar", "l2/layer.tar"]}])
    with tarfile.open(outer, "w") as tf:
        for name, data in (("manifest.json", manifest.encode()), ("l1/layer.tar", l1), ("l2/layer.tar", l2)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    ids = store.import_docker_save(outer)
    assert len(ids) == 2 and store.resolve("demo:1") == ids[1]
    assert [h["id"] for h in store.history("demo:1")] == [ids[1][:12], ids[0][:12]]
    with store.mounted("demo:1") as r:
        assert sorted(os.listdir(os.path.join(r, "etc"))) == ["os"]
        assert os.listdir(os.path.join(r, "var", "cache")) == []
        assert open(os.path.join(r, "app")).read() == "bin"
