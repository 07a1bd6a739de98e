"""``ImageStore.save``: image chains as layer archives, read back by labkit and by independent readers.

A three-image chain over busybox exercises every kind of change a layer carries (added files with modes,
owners, xattrs, symlinks, hard links and a FIFO; deletions of files and directories, an emptied
directory, type changes, metadata-only changes, an edit within the same second, an image with no
change at all). It is saved, imported back, compared file by file, and saved again: same layers, same
diff_ids, same bytes. skopeo and umoci (Debian packages) read the archives; podman loads and runs what
labkit writes, and labkit imports and runs what podman saves (podman runs with a private storage root,
cleaned up afterwards).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile

import pytest

from labkit import errors
from labkit._sys import mounts as sysmounts
from labkit.images import ImageConfig, ImageStore
from labkit.images.busybox import build_busybox_rootfs
from labkit.snapshots import backend_status, open_snapshotter

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts")]

OPTIONS = {"thin": {"data_size": "2G", "base_size": "256M"}, "btrfs": {"loop_size": "1G"},
           "reflink": {"loop_size": "1G"}}
_STATUS = {s.name: s for s in backend_status("/tmp")}
BACKENDS = [b for b in ("copy", "overlay", "btrfs", "reflink", "thin") if _STATUS[b].available]
SAME_SECOND = 1_600_000_000
CONFIG = ImageConfig(env=("PATH=/bin:/usr/bin", "GREETING=hi"), cmd=("cat", "/data/a"), workdir="/data",
                     user="0", labels=("org.example=lab",))


def _open(backend: str, path) -> ImageStore:
    sn = open_snapshotter(backend, path / "sn", **OPTIONS.get(backend, {}))
    return ImageStore(path / "images", sn)


@pytest.fixture
def store(request, tmp_path):
    st = _open(getattr(request, "param", "overlay"), tmp_path)
    try:
        yield st
    finally:
        st.close()
        st.sn.close()
        left = [m.target for m in sysmounts.mountinfo() if m.target.startswith(str(tmp_path))]
        for t in reversed(left):
            sysmounts.umount(t, sysmounts.MNT_DETACH)
        assert not left, f"mounts left behind: {left}"


def _write(path: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, *owner)
    os.chmod(path, mode)


def _layer1(t: str) -> None:
    d = os.path.join(t, "data")
    os.mkdir(d)
    os.chown(d, 1000, 1000)
    os.chmod(d, 0o750)
    _write(f"{d}/a", b"alpha\n", 0o640, (1000, 1000))
    os.setxattr(f"{d}/a", "user.labkit", b"v1")
    _write(f"{d}/exec", b"#!/bin/sh\necho x\n", 0o755)
    os.makedirs(f"{d}/sub/deep")
    _write(f"{d}/sub/deep/file", b"deep")
    os.symlink("a", f"{d}/link")
    os.symlink("/etc/passwd", f"{d}/abs")
    _write(f"{d}/h1", b"hard")
    os.link(f"{d}/h1", f"{d}/h2")
    os.mkfifo(f"{d}/fifo", 0o600)
    _write(f"{d}/gone", b"bye")
    os.makedirs(f"{d}/gonedir")
    _write(f"{d}/gonedir/x", b"x")
    os.makedirs(f"{d}/opq")
    _write(f"{d}/opq/one", b"1")
    _write(f"{d}/opq/two", b"2")
    _write(f"{d}/replace_file", b"file")
    os.makedirs(f"{d}/replace_dir/in")
    _write(f"{d}/same", b"aaaa")
    os.utime(f"{d}/same", (SAME_SECOND, SAME_SECOND))


def _layer2(t: str) -> None:
    d = os.path.join(t, "data")
    os.unlink(f"{d}/gone")
    shutil.rmtree(f"{d}/gonedir")
    for n in ("one", "two"):
        os.unlink(f"{d}/opq/{n}")
    _write(f"{d}/opq/three", b"3")
    os.unlink(f"{d}/replace_file")
    os.makedirs(f"{d}/replace_file")
    _write(f"{d}/replace_file/inside", b"now a dir")
    shutil.rmtree(f"{d}/replace_dir")
    os.symlink("sub", f"{d}/replace_dir")
    os.link(f"{d}/a", f"{d}/a2")
    os.chmod(f"{d}/exec", 0o700)
    os.chown(f"{d}/sub/deep/file", 2, 2)
    _write(f"{d}/same", b"bbbb")                        # same size, same second: only the content differs
    os.utime(f"{d}/same", (SAME_SECOND, SAME_SECOND))
    os.unlink(os.path.join(t, "etc", "hostname"))


def _chain(store: ImageStore) -> list[str]:
    base = store.import_busybox(tag="busybox")
    one = store._build(_layer1, parent=base, tag=None, created_by="RUN make data")
    two = store._build(_layer2, parent=one, tag=None, created_by="RUN change data")
    three = store._build(lambda _t: None, parent=two, tag="chain:1", created_by="ENV GREETING=hi", config=CONFIG)
    return [base, one, two, three]


def _tree(root: str, *, xattrs: bool = True, times: bool = True) -> dict[str, tuple]:
    """path -> what an image must keep: type, mode, owner, size, mtime (s), target, content, xattrs, links."""
    st = os.lstat(root)
    out: dict[str, tuple] = {".": (stat.S_IFDIR, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)}
    inodes: dict[tuple[int, int], str] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            content = target = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(open(p, "rb").read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(p)
            xa = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False)) for k in
                              os.listxattr(p, follow_symlinks=False) if k.startswith("user."))) \
                if xattrs and not stat.S_ISLNK(st.st_mode) else ()
            link = None
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                link = inodes.setdefault((st.st_dev, st.st_ino), rel)
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                        int(st.st_mtime) if times and not stat.S_ISLNK(st.st_mode) else 0, target, content, xa, link)
    return out


def _members(archive: str, digest: str) -> list[str]:
    with tarfile.open(archive) as tf:
        data = tf.extractfile(f"blobs/sha256/{digest[7:]}").read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.name for m in tf]


@pytest.mark.parametrize("store", BACKENDS, indirect=True)
def test_save_import_round_trip(store: ImageStore, tmp_path) -> None:
    ids = _chain(store)
    out = tmp_path / "chain.tar"
    r = store.save("chain:1", out)
    assert r.format == "oci-archive" and r.id == ids[-1] and r.name == "chain:1"
    assert len(r.layers) == 3 and r.empty_layers == 1 and len(r.diff_ids) == 3      # ENV added no layer
    top = _members(str(out), r.layers[2])
    for wh in ("data/.wh.gone", "data/.wh.gonedir", "data/opq/.wh..wh..opq", "etc/.wh.hostname"):
        assert wh in top, top
    assert "data/same" in top and "data/exec" in top and "data/sub/deep/file" in top
    assert "data/h1" not in top and "bin/busybox" not in top                         # unchanged: not carried
    assert top.index("data") < top.index("data/a") and "." not in top                  # parents first, no root

    back = store.import_auto(out, tag="back:1")
    hist = store.history("back:1")
    assert [h.created_by for h in hist] == ["RUN change data", "RUN make data", "labkit import busybox"]
    assert [round(h.created, 3) for h in hist] == [round(h.created, 3) for h in store.history(ids[2])]
    info = store.inspect("back:1")
    assert info.config == CONFIG and back != ids[-1]
    with store.mounted("chain:1") as a, store.mounted("back:1") as b:
        ta, tb = _tree(a), _tree(b)
    assert ta.pop(".")[:4] == tb.pop(".")[:4]               # the root's mtime moves with every top-level entry
    assert ta == tb
    assert tb["data/replace_dir"][6] == "sub" and tb["data/opq/three"][7] and "data/opq/one" not in tb
    assert tb["data/a2"][9] == tb["data/a"][9] == "data/a" and tb["data/a"][8] == (("user.labkit", b"v1"),)
    assert tb["data/same"][7] == hashlib.sha256(b"bbbb").hexdigest()

    again = store.save("back:1", tmp_path / "again.tar")          # the re-imported image keeps its identity
    assert again.layers == r.layers and again.diff_ids == r.diff_ids
    store.save("chain:1", tmp_path / "twice.tar")                 # and a second save is byte for byte the same
    assert (tmp_path / "twice.tar").read_bytes() == out.read_bytes()


def test_docker_archive_and_rootfs(store: ImageStore, tmp_path) -> None:
    ids = _chain(store)
    d = store.save("chain:1", tmp_path / "d.tar", format="docker-archive")
    assert d.layers == d.diff_ids and d.manifest_digest == ""                          # uncompressed layers
    with tarfile.open(tmp_path / "d.tar") as tf:
        names = tf.getnames()
        manifest = json.loads(tf.extractfile("manifest.json").read())
    assert manifest[0]["RepoTags"] == ["chain:1"] and manifest[0]["Config"] in names
    assert manifest[0]["Layers"] == [f"{x[7:]}.tar" for x in d.layers]
    back = store.import_auto(tmp_path / "d.tar", tag="fromdocker:1")
    with store.mounted(ids[-1]) as a, store.mounted(back) as b:
        ta, tb = _tree(a), _tree(b)
    ta.pop(".")
    tb.pop(".")
    assert ta == tb
    # gzip layers in a docker-archive, and the byte-identical second save
    z = store.save("chain:1", tmp_path / "z.tar", format="docker-archive", compress="gzip")
    assert z.diff_ids == d.diff_ids and z.layers != d.layers
    store.save("chain:1", tmp_path / "d2.tar", format="docker-archive")
    assert (tmp_path / "d2.tar").read_bytes() == (tmp_path / "d.tar").read_bytes()
    # rootfs: the whole tree, as export writes it
    rf = store.save(ids[-1], tmp_path / "root.tar", format="rootfs")
    assert rf.layers == () and rf.name == ""                                           # saved by id: no name
    assert store.export(ids[-1], tmp_path / "exp.tar") == rf.bytes
    assert (tmp_path / "exp.tar").read_bytes() == (tmp_path / "root.tar").read_bytes()
    with tarfile.open(tmp_path / "root.tar") as tf:
        names = tf.getnames()
    assert "." in names and "bin/busybox" in names and "data/gone" not in names and not [
        n for n in names if ".wh." in n]


def test_save_errors_and_output_safety(store: ImageStore, tmp_path) -> None:
    base = store.import_busybox(tag="busybox")
    with pytest.raises(errors.InvalidArgument, match="save format 'tar'"):
        store.save("busybox", tmp_path / "x.tar", format="tar")
    with pytest.raises(errors.InvalidArgument, match="compression 'xz'"):
        store.save("busybox", tmp_path / "x.tar", compress="xz")
    with pytest.raises(errors.NotFound, match="directory"):
        store.save("busybox", tmp_path / "missing" / "x.tar")
    with pytest.raises(errors.InvalidArgument, match="is a directory"):
        store.save("busybox", tmp_path)
    with pytest.raises(errors.NotFound):
        store.save("nope:1", tmp_path / "x.tar")
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, tmp_path / "out.tar")                  # a symlink at the destination is replaced
    store.save("busybox", tmp_path / "out.tar")
    assert victim.read_text() == "keep" and not os.path.islink(tmp_path / "out.tar")
    assert stat.S_IMODE(os.stat(tmp_path / "out.tar").st_mode) == 0o600
    bad = store._build(lambda t: open(os.path.join(t, ".wh.evil"), "w").close(), parent=base, tag="bad:1",
                       created_by="x")
    with pytest.raises(errors.InvalidArgument, match=r"\.wh\.evil.*whiteouts"):
        store.save(bad, tmp_path / "bad.tar")
    assert not (tmp_path / "bad.tar").exists() and sorted(os.listdir(tmp_path)) == ["images", "out.tar", "sn", "victim"]
    assert store.check().ok                                   # no scratch directory or view left


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: apt-get install {' '.join(missing)}")


def test_skopeo_and_umoci_read_labkit_archives(store: ImageStore, tmp_path) -> None:
    _need("skopeo", "umoci")
    ids = _chain(store)
    r = store.save("chain:1", tmp_path / "oci.tar")
    d = store.save("chain:1", tmp_path / "docker.tar", format="docker-archive")
    run = lambda *a: subprocess.run(a, capture_output=True, text=True, check=True).stdout   # noqa: E731
    info = json.loads(run("skopeo", "inspect", f"oci-archive:{tmp_path}/oci.tar"))
    assert info["Layers"] == list(r.layers) and info["Env"] == list(CONFIG.env)
    assert info["Labels"] == {"org.example": "lab"}
    assert info["Digest"] == r.manifest_digest
    cfg = json.loads(run("skopeo", "inspect", "--config", f"oci-archive:{tmp_path}/oci.tar"))
    assert cfg["rootfs"]["diff_ids"] == list(r.diff_ids) and cfg["config"]["Cmd"] == ["cat", "/data/a"]
    assert [h.get("empty_layer", False) for h in cfg["history"]] == [False, False, False, True]
    dinfo = json.loads(run("skopeo", "inspect", f"docker-archive:{tmp_path}/docker.tar"))
    assert dinfo["Layers"] == list(d.layers)
    # skopeo copy checks every blob against its digest
    run("skopeo", "copy", "--quiet", f"oci-archive:{tmp_path}/oci.tar", f"oci:{tmp_path}/copied:chain")
    # umoci reads layout directories: unpack ours and compare with the image
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(tmp_path / "oci.tar") as tf:
        tf.extractall(layout, filter="data")
    run("umoci", "unpack", "--image", f"{layout}:chain:1", str(tmp_path / "bundle"))
    with store.mounted(ids[-1]) as a:
        ta = _tree(a, times=False)
    tb = _tree(str(tmp_path / "bundle" / "rootfs"), times=False)
    ta.pop(".")
    tb.pop(".")
    assert ta == tb
    spec = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert spec["process"]["args"] == ["cat", "/data/a"] and "GREETING=hi" in spec["process"]["env"]


# ---- podman, with a storage root of its own -----------------------------------------------------------
PODMAN_RUN = ["--network", "none", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]


@pytest.fixture
def podman():
    _need("podman")
    base = tempfile.mkdtemp(prefix="lkpm-", dir="/var/tmp")   # podman wants a runroot under 50 characters
    cmd = ["podman", "--root", f"{base}/root", "--runroot", f"{base}/run", "--tmpdir", f"{base}/tmp",
           "--storage-driver", "overlay", "--runtime", "runc", "--events-backend", "none",
           "--cgroup-manager", "cgroupfs", "--network-config-dir", f"{base}/net"]

    made = [p for p in ("/run/containers", "/run/containers/networks") if not os.path.exists(p)]

    def pm(*args: str, check: bool = True) -> str:
        p = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {p.returncode}: {p.stderr.strip()}")
        return p.stdout
    try:
        yield pm
    finally:
        pm("rm", "-a", "-f", check=False)
        pm("system", "reset", "-f", check=False)
        left = [m.target for m in sysmounts.mountinfo() if m.target.startswith(base + "/")]
        for m in reversed(left):
            sysmounts.umount(m, sysmounts.MNT_DETACH)
        shutil.rmtree(base, ignore_errors=True)
        for p in reversed(made):        # root podman's network state directory, if this test made it
            shutil.rmtree(p, ignore_errors=True)
        assert not left, f"podman left mounts: {left}"


def test_podman_loads_and_runs_what_labkit_saves(tmp_path, podman) -> None:
    from labkit import Lab
    with Lab(str(tmp_path / "lab"), "overlay") as lab:
        try:
            lab.import_image("busybox", tag="busybox")
            c = lab.run("busybox", ["sh", "-c", "rm /bin/vi && mkdir /app && echo from-labkit > /app/msg"], name="mk")
            assert c.exit_code == 0, c.output
            app = lab.commit(c)
            c.remove()
            lab.store._build(lambda _t: None, parent=app, tag="lk:1", created_by="CMD cat /app/msg",
                             config=ImageConfig(env=("PATH=/bin", "GREETING=hello"), cmd=("cat", "/app/msg")))
            for fmt in ("oci-archive", "docker-archive"):
                lab.store.save("lk:1", tmp_path / f"{fmt}.tar", format=fmt)
        finally:
            lab.reset()
    for fmt in ("oci-archive", "docker-archive"):
        assert "localhost/lk:1" in podman("load", "-i", str(tmp_path / f"{fmt}.tar"))
        assert podman("run", "--rm", *PODMAN_RUN, "localhost/lk:1") == "from-labkit\n"
        out = podman("run", "--rm", *PODMAN_RUN, "localhost/lk:1", "sh", "-c", "test ! -e /bin/vi && echo $GREETING")
        assert out == "hello\n"
        podman("rmi", "-a", "-f")


def test_labkit_imports_and_runs_what_podman_saves(tmp_path, podman) -> None:
    from labkit import Lab
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    build_busybox_rootfs(str(rootfs))
    with tarfile.open(tmp_path / "rootfs.tar", "w") as tf:
        tf.add(rootfs, arcname=".")
    podman("import", str(tmp_path / "rootfs.tar"), "localhost/pbb:1")
    podman("run", "--name", "c1", *PODMAN_RUN, "localhost/pbb:1", "sh", "-c",
           "rm /bin/vi && rm -r /var/www && mkdir /app && echo from-podman > /app/msg")
    podman("commit", "--change", 'CMD ["cat", "/app/msg"]', "--change", "ENV GREETING=hey", "c1", "localhost/pbb:2")
    podman("rm", "c1")
    podman("save", "-o", str(tmp_path / "d.tar"), "localhost/pbb:2")
    podman("save", "--format", "oci-archive", "-o", str(tmp_path / "o.tar"), "localhost/pbb:2")
    with Lab(str(tmp_path / "lab"), "overlay") as lab:
        try:
            for f in ("d.tar", "o.tar"):
                top = lab.import_image(str(tmp_path / f))
                assert lab.store.inspect(top).tags == ("localhost/pbb:2",)
                assert len(lab.store.history(top)) == 2                      # one image per layer
                assert lab.run("localhost/pbb:2", rm=True).output == "from-podman\n"
                out = lab.run("localhost/pbb:2",
                              ["sh", "-c", "test ! -e /bin/vi && test ! -e /var/www && echo $GREETING"],
                              rm=True).output
                assert out == "hey\n"
        finally:
            lab.reset()
