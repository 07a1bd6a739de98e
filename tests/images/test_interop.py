"""Image archives of other tools, built by hand here (tarfile + json + sha256; no docker or podman needed):
docker-archive (``docker save``), OCI layouts as a directory and as an ``oci-archive`` tar, nested indexes,
several images in one archive, tampered blobs, content detection by ``import_auto``."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from labkit import errors
from labkit.images import ImageStore
from labkit.images.interop import _host_platform, detect, detect_names

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts")]

CONFIG = {"Env": ["PATH=/usr/bin:/bin", "APP=1"], "Cmd": ["serve", "--port", "80"], "Entrypoint": ["/app"],
          "WorkingDir": "/srv", "User": "65534", "Labels": {"org.example.team": "lab", "b": "2"}}


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


BASE = _tar([("etc", None), ("etc/os", b"base"), ("etc/gone", b"x"), ("var", None), ("var/cache", None),
             ("var/cache/a", b"a")])
TOP = _tar([("etc/.wh.gone", b""), ("var/cache/.wh..wh..opq", b""), ("var/cache/new", b"n"), ("app", b"bin")])


def _image_config(layers: list[bytes], config=CONFIG) -> dict:
    return {"architecture": "amd64", "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_sha(x)}" for x in layers]},
            "history": [{"created_by": "ADD base.tar /"}, {"created_by": "RUN echo empty", "empty_layer": True},
                        {"created_by": "RUN make app"}][:len(layers) + 1]}


def _docker_archive(path, images, *, symlink_dup: bool = False, bad_diff: bool = False) -> None:
    """images: [(repo_tags, [layer bytes], config dict)]; legacy layout <hex>/layer.tar + <hex>.json."""
    files: dict[str, bytes] = {}
    manifest = []
    links: list[tuple[str, str]] = []
    for tags, layers, config in images:
        cfg = dict(_image_config(layers, config))
        if bad_diff:
            cfg["rootfs"] = {"type": "layers", "diff_ids": [f"sha256:{'0' * 64}"] * len(layers)}
        cfg_bytes = json.dumps(cfg).encode()
        names = []
        for data in layers:
            name = f"{_sha(data)}/layer.tar"
            if name in files and symlink_dup:
                alias = f"{_sha(data + b'alias')}/layer.tar"
                links.append((alias, f"../{_sha(data)}/layer.tar"))
                name = alias
            else:
                files[name] = data
            names.append(name)
        files[f"{_sha(cfg_bytes)}.json"] = cfg_bytes
        manifest.append({"Config": f"{_sha(cfg_bytes)}.json", "RepoTags": tags, "Layers": names})
    files["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for name, target in links:
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = tarfile.SYMTYPE, target
            tf.addfile(ti)


def _oci(images, *, nested: bool = False, compress=("gzip", "gzip")) -> dict[str, bytes]:
    """The files of an OCI layout. images: [(annotations, [layer bytes], config)]."""
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> dict:
        blobs[_sha(data)] = data
        return {"digest": f"sha256:{_sha(data)}", "size": len(data)}
    descs = []
    for ann, layers, config in images:
        ldescs = []
        for data, comp in zip(layers, compress):
            if comp == "gzip":
                ldescs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(gzip.compress(data))})
            elif comp == "zstd":
                z = subprocess.run(["zstd", "-c"], input=data, capture_output=True, check=True).stdout
                ldescs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", **put(z)})
            else:
                ldescs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", **put(data)})
        cfg = {"mediaType": "application/vnd.oci.image.config.v1+json",
               **put(json.dumps(_image_config(layers, config)).encode())}
        man = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg,
               "layers": ldescs}
        descs.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", **put(json.dumps(man).encode()),
                      "annotations": ann})
    if nested:      # one index per platform: this host's and another
        os_, arch = _host_platform()
        other = "s390x" if arch != "s390x" else "arm64"
        plat = [dict(d, platform={"os": os_, "architecture": arch}) for d in descs[:1]]
        plat += [dict(d, platform={"os": "linux", "architecture": other}) for d in descs[1:]]
        for d in plat:
            d.pop("annotations", None)
        inner = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": plat}).encode()
        descs = [{"mediaType": "application/vnd.oci.image.index.v1+json", **put(inner),
                  "annotations": {"org.opencontainers.image.ref.name": "multi:1"}}]
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "manifests": descs}).encode()}
    files.update({f"blobs/sha256/{h}": b for h, b in blobs.items()})
    return files


def _write_dir(top, files: dict[str, bytes]):
    for name, data in files.items():
        p = top / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return top


def _write_tar(path, files: dict[str, bytes]):
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


@pytest.fixture
def store(copy_store):
    return copy_store


def _look(store: ImageStore, ref: str) -> None:
    with store.mounted(ref) as r:
        assert sorted(os.listdir(os.path.join(r, "etc"))) == ["os"]                  # .wh.gone
        assert os.listdir(os.path.join(r, "var", "cache")) == ["new"]                # opaque dir
        assert open(os.path.join(r, "app"), "rb").read() == b"bin"


def _has_config(store: ImageStore, ref: str) -> None:
    info = store.inspect(ref)
    assert info.env == ("PATH=/usr/bin:/bin", "APP=1") and info.cmd == ("serve", "--port", "80")
    assert info.entrypoint == ("/app",) and info.workdir == "/srv" and info.user == "65534"
    assert info.labels == ("b=2", "org.example.team=lab")


def test_docker_archive_picks_by_ref_and_keeps_config(store, tmp_path) -> None:
    path = tmp_path / "save.tar"
    _docker_archive(path, [(["demo:1"], [BASE, TOP], CONFIG), (["other:2", "other:latest"], [BASE], {"Cmd": ["sh"]})])
    assert detect(path) == "docker-archive"
    with pytest.raises(errors.InvalidArgument) as ei:
        store.import_auto(path)
    msg = str(ei.value)
    assert "holds 2 images" in msg and "demo:1" in msg and "other:2" in msg and "ref=" in msg and "\n" not in msg
    with pytest.raises(errors.InvalidArgument, match="has no image 'nope:1'"):
        store.import_auto(path, ref="nope:1")
    assert store.images() == []

    top = store.import_auto(path, ref="demo:1")
    ids = [h.id for h in reversed(store.history(top))]
    assert len(ids) == 2 and store.resolve("demo:1") == ids[1]
    hist = store.history("demo:1")
    assert [h.id for h in hist] == [ids[1], ids[0]]
    assert [h.created_by for h in hist] == ["RUN make app", "ADD base.tar /"]      # empty_layer skipped
    _look(store, "demo:1")
    _has_config(store, "demo:1")
    assert store.inspect(ids[0]).cmd == () and store.inspect(ids[0]).tags == ()    # the config is the top's

    (other,) = store.import_docker_save(path, ref="other:latest")
    assert store.resolve("other:latest") == other and store.inspect(other).cmd == ("sh",)


def test_podman_save_layout_is_a_docker_archive() -> None:
    """podman save writes layers as <diff_id>.tar at the top (and docker's legacy <id>/layer.tar links)."""
    names = [f"{'a' * 64}.tar", f"{'b' * 64}.json", f"{'c' * 64}/layer.tar", f"{'c' * 64}/VERSION", "manifest.json",
             "repositories"]
    assert detect_names(names) == "docker-archive" and detect_names(["x.tar", "manifest.json"]) == "rootfs"


def test_docker_archive_symlinked_layer_and_diff_ids(store, tmp_path) -> None:
    """docker save stores a repeated layer once and links to it; diff_ids are checked for plain layers."""
    path = tmp_path / "dup.tar"
    _docker_archive(path, [(["dup:1"], [BASE, BASE], {})], symlink_dup=True)
    assert len(store.history(store.import_auto(path))) == 2
    bad = tmp_path / "bad.tar"
    _docker_archive(bad, [(["bad:1"], [BASE, TOP], {})], bad_diff=True)
    before = store.images()
    with pytest.raises(errors.InvalidArgument, match="does not match its digest"):
        store.import_auto(bad)
    assert store.images() == before and store.check().ok        # all or nothing


@pytest.mark.parametrize("form", ["dir", "archive"])
def test_oci_layout(store, tmp_path, form) -> None:
    comp = ("gzip", "zstd") if shutil.which("zstd") else ("gzip", "plain")
    files = _oci([({"io.containerd.image.name": "docker.io/library/demo:1",
                    "org.opencontainers.image.ref.name": "1"}, [BASE, TOP], CONFIG)], compress=comp)
    src = _write_dir(tmp_path / "layout", files) if form == "dir" else _write_tar(tmp_path / "oci.tar", files)
    assert detect(src) == "oci"
    ids = [h.id for h in reversed(store.history(store.import_auto(src)))]
    assert len(ids) == 2 and store.resolve("docker.io/library/demo:1") == ids[1]
    _look(store, ids[1])
    _has_config(store, ids[1])
    top = store.import_auto(src, tag="mine:v1")
    assert store.resolve("mine:v1") == top and len(store.history(top)) == 2


def test_oci_several_manifests_and_platforms(store, tmp_path) -> None:
    files = _oci([({"org.opencontainers.image.ref.name": "app:v1"}, [BASE], {"Cmd": ["one"]}),
                  ({"org.opencontainers.image.ref.name": "app:v2"}, [BASE], {"Cmd": ["two"]})])
    src = _write_tar(tmp_path / "two.tar", files)
    with pytest.raises(errors.InvalidArgument) as ei:
        store.import_auto(src)
    assert "holds 2 images" in str(ei.value) and "app:v1" in str(ei.value) and "app:v2" in str(ei.value)
    one = store.import_auto(src, ref="app:v2")
    assert store.inspect(one).cmd == ("two",) and store.inspect(one).tags == ("app:v2",)
    # by digest prefix
    digest = json.loads(files["index.json"])["manifests"][0]["digest"]
    first = store.import_auto(src, ref=digest[:19])
    assert store.inspect(first).cmd == ("one",)
    # a nested index: the manifest for this host's platform is chosen
    nested = _write_dir(tmp_path / "multi", _oci([({}, [BASE], {"Cmd": ["host"]}), ({}, [BASE], {"Cmd": ["other"]})],
                                                 nested=True))
    host = store.import_auto(nested)
    assert store.inspect(host).cmd == ("host",) and store.inspect(host).tags == ("multi:1",)


def test_oci_tampered_or_linked_blobs_are_refused(store, tmp_path) -> None:
    files = _oci([({"org.opencontainers.image.ref.name": "t:1"}, [BASE, TOP], CONFIG)])
    manifest = json.loads(files["index.json"])["manifests"][0]["digest"][7:]
    layers = json.loads(files[f"blobs/sha256/{manifest}"])["layers"]
    # the second layer's blob is replaced by another valid gzip tar: caught after the first layer was made
    tampered = dict(files)
    tampered[f"blobs/sha256/{layers[1]['digest'][7:]}"] = gzip.compress(_tar([("evil", b"x")]))
    with pytest.raises(errors.InvalidArgument, match="does not match its digest"):
        store.import_auto(_write_dir(tmp_path / "tampered", tampered))
    assert store.images() == [] and [i.name for i in store.sn.walk()] == []       # all or nothing
    # a blob that is a symlink (to a host file) is never followed
    linked = _write_dir(tmp_path / "linked", files)
    blob = linked / "blobs" / "sha256" / layers[0]["digest"][7:]
    blob.unlink()
    os.symlink("/etc/hostname", blob)
    with pytest.raises(errors.InvalidArgument, match="follows no symlink"):
        store.import_auto(linked)
    # a descriptor whose digest is not sha256 hex never becomes a path
    index = json.loads(files["index.json"])
    index["manifests"][0]["digest"] = "sha256:../../../etc/passwd"
    bad = dict(files, **{"index.json": json.dumps(index).encode()})
    with pytest.raises(errors.InvalidArgument, match="sha256:<64 hex digits>"):
        store.import_auto(_write_dir(tmp_path / "badindex", bad))
    assert store.images() == []


def test_auto_rootfs_tar_and_dir(store, tmp_path) -> None:
    rootfs = tmp_path / "rootfs.tar.gz"
    rootfs.write_bytes(gzip.compress(_tar([("./", None), ("bin", None), ("bin/sh", b"#!")])))
    assert detect(rootfs) == "rootfs"
    img = store.import_auto(rootfs, tag="r:1")
    assert store.resolve("r:1") == img
    with store.mounted("r:1") as r:
        assert os.listdir(os.path.join(r, "bin")) == ["sh"]
    d = tmp_path / "tree"
    (d / "etc").mkdir(parents=True)
    (d / "etc" / "x").write_text("y")
    assert detect(d) == "dir"
    img2 = store.import_auto(d, tag="d:1")
    assert store.resolve("d:1") == img2
    assert store.inspect("d:1").size == 1
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(errors.InvalidArgument, match=r"junk\.tar.*not a tar archive"):
        store.import_auto(junk)


@pytest.mark.parametrize("case", ["oci-layout-not-json", "index-not-a-list", "manifest-not-a-list",
                                  "manifest-missing-layer", "docker-no-config"])
def test_malformed_image_archives_are_one_line(store, tmp_path, case) -> None:
    if case.startswith(("oci", "index")):
        files = _oci([({"org.opencontainers.image.ref.name": "x:1"}, [BASE], {})])
        if case == "oci-layout-not-json":
            files["oci-layout"] = b"{not json"
        else:
            files["index.json"] = b'{"manifests": 3}'
        src = _write_dir(tmp_path / "layout", files)
    else:
        src = tmp_path / "save.tar"
        _docker_archive(src, [(["x:1"], [BASE], {})])
        with tarfile.open(src) as tf:
            files = {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}
        manifest = json.loads(files["manifest.json"])
        if case == "manifest-not-a-list":
            files["manifest.json"] = b'{"Layers": "x"}'
        elif case == "manifest-missing-layer":
            manifest[0]["Layers"].append("0" * 64 + "/layer.tar")
            files["manifest.json"] = json.dumps(manifest).encode()
        else:
            del files[manifest[0]["Config"]]
        _write_tar(src, files)
    with pytest.raises(errors.InvalidArgument) as ei:
        store.import_auto(src)
    assert "\n" not in str(ei.value) and str(tmp_path) in str(ei.value), str(ei.value)
    assert store.images() == [] and list(store.sn.walk()) == []
