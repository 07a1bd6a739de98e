"""Image archives from other tools: ``docker save`` / ``podman save`` and OCI image layouts.

Three containers of images are recognised by content (:func:`detect`), never by file name:

* **docker-archive** (``docker save``, ``podman save``): a tar with ``manifest.json`` — a list of
  ``{"Config": path, "RepoTags": [...], "Layers": [path, ...]}`` — and the files it names;
* **OCI image layout** (image-spec ``image-layout.md``), as a directory or a tar (``oci-archive``):
  ``oci-layout``, ``index.json`` (descriptors of manifests, or of nested indexes for several
  platforms), and content-addressed ``blobs/sha256/<hex>``; every blob read is checked against its digest
  and size;
* anything else that is a tar is a root filesystem.

An image becomes a chain of labkit images, one per layer, each layer extracted as hostile input onto the
previous one with whiteouts (``.wh.NAME``, ``.wh..wh..opq``) honoured; the top image gets the image
config (Env, Cmd, Entrypoint, WorkingDir, User, Labels) and the tag. A layer's ``created_by`` comes from
the config's history where it lines up with the layers. All or nothing: a failing layer removes the
layers imported before it. An archive with several images (or an index with several manifests) is
narrowed by ``ref`` — a RepoTag or image name, an ``org.opencontainers.image.ref.name``, or a digest
prefix — and without one the error lists the choices.

>>> detect_names(["manifest.json", "0" * 64 + ".json"]), detect_names(["oci-layout", "index.json", "blobs/sha256/ab"])
('docker-archive', 'oci')
>>> detect_names(["./", "./bin/sh"])
'rootfs'
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import stat
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO

from .. import errors
from . import archive, tarsafe
from .records import ImageConfig
from .reference import normalize

__all__ = ["import_auto", "import_docker_archive", "import_oci", "detect", "detect_names", "host_platform"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_JSON_MAX = 16 << 20
_LAYOUT_TOP = {"manifest.json", "repositories", "index.json", "oci-layout", "blobs"}
_OCI_MANIFEST = {"application/vnd.oci.image.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.v2+json"}
_OCI_INDEX = {"application/vnd.oci.image.index.v1+json",
              "application/vnd.docker.distribution.manifest.list.v2+json"}
_OCI_LAYERS = {"application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
               "application/vnd.oci.image.layer.v1.tar+zstd",
               "application/vnd.oci.image.layer.nondistributable.v1.tar",
               "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
               "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
               "application/vnd.docker.image.rootfs.diff.tar.gzip",
               "application/vnd.docker.image.rootfs.diff.tar"}
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
_MAX_LINKS = 8
_MAX_MEMBERS = 100_000


def _bad(label: str, why: str,
         fix: str = "give an image archive made by docker/podman save or skopeo") -> errors.InvalidArgument:
    return errors.InvalidArgument(label, why, fix=fix)


# ---- sources: a tar (random access) or a directory ----------------------------------------------------
class _TarSource:
    """Members of an image archive tar, by normalised name; links inside the archive are followed there."""

    def __init__(self, path: str, label: str) -> None:
        self.label = label
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            self.tf = tarfile.open(path, "r:*")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise _bad(f"archive {label}", f"is not a readable tar archive ({' '.join(str(e).split())})",
                       fix=archive.EXPECTED) from None
        try:
            for m in self.tf:
                self.members[_norm(m.name)] = m
                if len(self.members) > _MAX_MEMBERS:
                    raise _bad(f"archive {label}", f"has more than {_MAX_MEMBERS} members, too many for an "
                               "image archive")
            # the dict above is the index: do not keep two (TarFile.members: undocumented, not in typeshed)
            self.tf.members = []       # type: ignore[attr-defined]
        except (tarfile.TarError, EOFError, OSError) as e:
            self.tf.close()
            raise _bad(f"archive {label}", f"is not a readable tar archive ({' '.join(str(e).split())})",
                       fix=archive.EXPECTED) from None
        except BaseException:
            self.tf.close()
            raise

    def names(self) -> list[str]:
        return list(self.members)

    def has(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str) -> BinaryIO:
        m = self.members.get(name)
        seen = 0
        while m is not None and (m.issym() or m.islnk()):
            seen += 1
            if seen > _MAX_LINKS:
                raise _bad(f"member {name!r} of {self.label}", "is a chain of links that does not end")
            target = (m.linkname if m.islnk()
                      else os.path.normpath(os.path.join(os.path.dirname(_norm(m.name)), m.linkname)))
            m = self.members.get(_norm(target))
        if m is None:
            raise _bad(f"archive {self.label}", f"has no member {name!r}", fix="the archive is incomplete")
        if not m.isreg():
            raise _bad(f"member {name!r} of {self.label}", "is not a regular file")
        f = self.tf.extractfile(m)
        assert f is not None
        return f     # type: ignore[return-value]

    def size(self, name: str) -> int | None:
        m = self.members.get(name)
        return m.size if m is not None and m.isreg() else None

    def close(self) -> None:
        self.tf.close()


class _DirSource:
    """Files of an OCI layout directory, opened component by component without following any symlink."""

    def __init__(self, path: str, label: str) -> None:
        self.label = label
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _open(self, name: str) -> int:
        parts = name.split("/")
        fd = os.dup(self.fd)
        try:
            for comp in parts[:-1]:
                nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nfd
            out = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
        except FileNotFoundError:
            raise _bad(f"OCI layout {self.label}", f"has no file {name!r}", fix="the layout is incomplete") from None
        except OSError as e:
            raise _bad(f"OCI layout {self.label}", f"cannot open {name!r} ({e.strerror}): labkit follows no "
                       "symlink in a layout") from None
        finally:
            os.close(fd)
        if not stat.S_ISREG(os.fstat(out).st_mode):
            os.close(out)
            raise _bad(f"file {name!r} of OCI layout {self.label}", "is not a regular file")
        return out

    def names(self) -> list[str]:
        return [n for n in ("oci-layout", "index.json") if self.has(n)]

    def has(self, name: str) -> bool:
        try:
            os.close(self._open(name))
            return True
        except errors.InvalidArgument:
            return False

    def open(self, name: str) -> BinaryIO:
        return os.fdopen(self._open(name), "rb")

    def size(self, name: str) -> int | None:
        fd = self._open(name)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def close(self) -> None:
        os.close(self.fd)


def _norm(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _read_json(src: Any, name: str, what: str) -> Any:
    size = src.size(name)
    if size is not None and size > _JSON_MAX:
        raise _bad(f"{what} of {src.label}", f"is {size} bytes, over the limit of {_JSON_MAX}")
    with src.open(name) as f:
        data = f.read(_JSON_MAX + 1)
    return _parse_json(data, f"{what} of {src.label}")


def _parse_json(data: bytes, label: str) -> Any:
    if len(data) > _JSON_MAX:
        raise _bad(label, f"is over the limit of {_JSON_MAX} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise _bad(label, f"is not valid JSON ({' '.join(str(e).split())})") from None


# ---- detection -------------------------------------------------------------------------------------
def detect_names(names: Iterable[str]) -> str:
    """``docker-archive``, ``oci`` or ``rootfs`` from an archive's member names, in archive order; stops
    at the first name an image archive cannot have (so a big rootfs tar is not read to its end)."""
    seen: set[str] = set()
    for raw in names:
        name = _norm(raw)
        if not name:
            return "rootfs"
        top = name.split("/")[0]
        # podman save names layers <hex>.tar at the top; docker's legacy layout <hex>/layer.tar
        if top not in _LAYOUT_TOP and not _HEX64.match(top.removesuffix(".json").removesuffix(".tar")):
            return "rootfs"
        seen.add(name)
    if "manifest.json" in seen:
        return "docker-archive"
    if "oci-layout" in seen and "index.json" in seen:
        return "oci"
    return "rootfs"


def detect(path: str | os.PathLike[str]) -> str:
    """What ``path`` holds: ``oci`` (a layout directory or archive), ``docker-archive``, ``rootfs`` (a
    tar) or ``dir`` (a root filesystem directory); a malformed file is ``InvalidArgument``.

    >>> detect("/")
    'dir'
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        return "oci" if os.path.isfile(os.path.join(p, "oci-layout")) else "dir"
    archive.check_file(p)
    with open(p, "rb") as f:
        plain = archive.sniff(f.read(6)) == "plain"
    if plain:     # seek from header to header instead of reading every member's data
        try:
            with tarfile.open(p, "r:") as tf:
                return detect_names(m.name for m in tf)
        except (tarfile.TarError, EOFError):
            pass          # open_tar below says what is wrong, in one line
    with archive.open_tar(p) as stream:
        return detect_names(m.name for m in stream)


# ---- entry points ----------------------------------------------------------------------------------
def import_auto(store: Any, path: str | os.PathLike[str], *, tag: str | None = None, ref: str | None = None,
                **limits: Any) -> list[str]:
    """Import ``path`` by what it holds (see the module docstring); returns the new image ids, base first."""
    kind = detect(path)
    if kind == "dir":
        return [store.import_dir(path, tag=tag)]
    if kind == "rootfs":
        return [store.import_tar(path, tag=tag, **limits)]
    if kind == "docker-archive":
        return import_docker_archive(store, path, tag=tag, ref=ref, **limits)
    return import_oci(store, path, tag=tag, ref=ref, **limits)


def _matches(ref: str, names: Iterable[str]) -> bool:
    try:
        want = normalize(ref)
    except errors.InvalidArgument:
        want = None
    for n in names:
        if n == ref:
            return True
        try:
            if want is not None and normalize(n) == want:
                return True
        except errors.InvalidArgument:
            continue
    return False


def _first_valid(names: Iterable[str | None]) -> str | None:
    for n in names:
        if n:
            try:
                return normalize(n)
            except errors.InvalidArgument:
                continue
    return None


def import_docker_archive(store: Any, path: str | os.PathLike[str], *, tag: str | None = None,
                          ref: str | None = None, **limits: Any) -> list[str]:
    """One image of a ``docker save`` / ``podman save`` archive as a chain of images; ids base first."""
    p = os.fspath(path)
    archive.check_file(p)
    label = archive.describe(p)
    src = _TarSource(p, label)
    try:
        if not src.has("manifest.json"):
            raise _bad(f"archive {label}", "has no manifest.json", fix="give the output of `docker save`")
        manifest = _read_json(src, "manifest.json", "manifest.json")
        if not isinstance(manifest, list) or not manifest or not all(
                isinstance(e, dict) and isinstance(e.get("Layers"), list)
                and all(isinstance(x, str) for x in e["Layers"]) for e in manifest):
            raise _bad(f"manifest.json of {label}", "is not a list of images with Layers")
        choices = [(e, [t for t in (e.get("RepoTags") or []) if isinstance(t, str)]) for e in manifest]

        def name_of(e: dict[str, Any], tags: list[str]) -> str:
            cfg = e.get("Config")
            untagged = f"<untagged> config {os.path.basename(cfg if isinstance(cfg, str) else '')[:19]}"
            return ",".join(tags) or untagged
        if ref is not None:
            picked = [(e, t) for e, t in choices if _matches(ref, t)
                      or (isinstance(e.get("Config"), str) and _digest_match(ref, e["Config"]))]
        else:
            picked = choices
        if len(picked) != 1:
            listed = "; ".join(name_of(e, t) for e, t in choices)
            if ref is not None and not picked:
                raise _bad(f"archive {label}", f"has no image {ref!r} (it holds: {listed})",
                           fix="give one of those as ref=")
            raise _bad(f"archive {label}", f"holds {len(picked)} images: {listed}", fix="pick one with ref=")
        entry, repo_tags = picked[0]
        config: dict[str, Any] = {}
        if isinstance(entry.get("Config"), str):
            c = _read_json(src, _norm(entry["Config"]), f"config {entry['Config']!r}")
            config = c if isinstance(c, dict) else {}
        top_tag = tag or _first_valid([t for t in repo_tags if ref is None or _matches(ref, [t])] + repo_tags)
        layers = [_norm(x) for x in entry["Layers"]]
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config.get("rootfs"), dict) else None
        if not (isinstance(diff_ids, list) and len(diff_ids) == len(layers)):
            diff_ids = [None] * len(layers)
        steps = [(layer, lambda layer=layer: src.open(layer), d if isinstance(d, str) else None, None)
                 for layer, d in zip(layers, diff_ids)]
        return _chain(store, steps, label=label, kind="docker-archive", config=config, tag=top_tag, **limits)
    finally:
        src.close()


def _digest_match(ref: str, name: str) -> bool:
    want = ref[7:] if ref.startswith("sha256:") else ref
    if not want or not re.match(r"^[0-9a-f]+$", want):
        return False
    base = os.path.basename(name).removesuffix(".json").removeprefix("sha256:")
    return bool(_HEX64.match(base)) and base.startswith(want)


def import_oci(store: Any, path: str | os.PathLike[str], *, tag: str | None = None, ref: str | None = None,
               **limits: Any) -> list[str]:
    """One image of an OCI layout (directory or tar) as a chain of images; ids base first."""
    p = os.fspath(path)
    label = archive.describe(p)
    if os.path.isdir(p):
        src: Any = _DirSource(p, label)
    else:
        archive.check_file(p)
        src = _TarSource(p, label)
    try:
        layout = _read_json(src, "oci-layout", "oci-layout")
        if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
            raise _bad(f"oci-layout of {label}", "has no imageLayoutVersion", fix="give an OCI image layout")
        index = _read_json(src, "index.json", "index.json")
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise _bad(f"index.json of {label}", "has no manifests list", fix="give an OCI image layout")
        candidates = list(_manifests(src, index["manifests"], label, names=()))
        if ref is not None:
            picked = [c for c in candidates if _matches(ref, c[1]) or _digest_match(ref, c[0]["digest"])]
        else:
            picked = candidates
        if len(picked) != 1:
            listed = "; ".join(",".join(n) + f" ({d['digest'][:19]})" if n else d["digest"][:19]
                               for d, n in candidates) or "none"
            if ref is not None and not picked:
                raise _bad(f"OCI layout {label}", f"has no image {ref!r} (it holds: {listed})",
                           fix="give one of those as ref=")
            raise _bad(f"OCI layout {label}", f"holds {len(picked)} images: {listed}", fix="pick one with ref=")
        desc, names = picked[0]
        manifest = _blob_json(src, desc, label, "manifest")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list) \
                or not isinstance(manifest.get("config"), dict):
            raise _bad(f"manifest {desc['digest'][:19]} of {label}", "has no config and layers")
        config = _blob_json(src, _descriptor(manifest["config"], label), label, "config")
        steps = []
        for d in manifest["layers"]:
            d = _descriptor(d, label)
            if d.get("mediaType") not in _OCI_LAYERS:
                raise _bad(f"layer {d['digest'][:19]} of {label}", f"has media type {d.get('mediaType')!r}, "
                           "which labkit cannot apply", fix="layers must be tar, tar+gzip or tar+zstd")
            steps.append((d["digest"], lambda d=d: src.open(_blob_path(d)), d["digest"], d.get("size")))
        top_tag = tag or _first_valid([n for n in names if ":" in n or "/" in n])
        return _chain(store, steps, label=label, kind="oci", config=config if isinstance(config, dict) else {},
                      tag=top_tag, compressed_digest=True, **limits)
    finally:
        src.close()


def _descriptor(d: Any, label: str) -> dict[str, Any]:
    if not isinstance(d, dict) or not isinstance(d.get("digest"), str):
        raise _bad(f"a descriptor in {label}", "has no digest")
    alg, _, hexd = d["digest"].partition(":")
    if alg != "sha256" or not _HEX64.match(hexd):
        raise _bad(f"descriptor {d['digest'][:80]!r} in {label}", "is not sha256:<64 hex digits>",
                   fix="labkit reads sha256 blobs only")
    if "size" in d and (not isinstance(d["size"], int) or d["size"] < 0):
        raise _bad(f"descriptor {d['digest'][:19]} in {label}", "has a bad size")
    return d


def _blob_path(d: dict[str, Any]) -> str:
    digest: str = d["digest"]                                  # validated by _descriptor
    return "blobs/sha256/" + digest.partition(":")[2]


def _blob_json(src: Any, d: dict[str, Any], label: str, what: str) -> Any:
    path = _blob_path(d)
    with src.open(path) as f:
        data = f.read(_JSON_MAX + 1)
    if hashlib.sha256(data).hexdigest() != path.rsplit("/", 1)[1] or ("size" in d and len(data) != d["size"]):
        raise _bad(f"{what} blob {d['digest'][:19]} of {label}", "does not match its digest or size",
                   fix="the layout is corrupt or was tampered with")
    return _parse_json(data, f"{what} {d['digest'][:19]} of {label}")


def host_platform() -> tuple[str, str]:
    """This host's OCI platform: ``("linux", "amd64")`` on x86_64."""
    return "linux", _ARCH.get(platform.machine(), platform.machine())


_host_platform = host_platform


def _manifests(src: Any, descs: list[Any], label: str, names: tuple[str, ...], depth: int = 0
               ) -> Iterator[tuple[dict[str, Any], tuple[str, ...]]]:
    """(manifest descriptor, its names) for each image: nested indexes are opened, and of their
    manifests only those for this host's platform are kept."""
    if depth > 4:
        raise _bad(f"index of {label}", "nests indexes too deep")
    for d in descs:
        d = _descriptor(d, label)
        ann = d.get("annotations")
        if not isinstance(ann, dict):
            ann = {}
        own = tuple(str(ann[k]) for k in ("io.containerd.image.name", "org.opencontainers.image.ref.name")
                    if isinstance(ann.get(k), str)) or names
        mt = d.get("mediaType")
        if mt in _OCI_INDEX:
            nested = _blob_json(src, d, label, "index")
            if not isinstance(nested, dict) or not isinstance(nested.get("manifests"), list):
                raise _bad(f"index {d['digest'][:19]} of {label}", "has no manifests list")
            os_, arch = host_platform()
            mine = [m for m in nested["manifests"] if isinstance(m, dict)
                    and (not isinstance(m.get("platform"), dict)
                         or (m["platform"].get("os") == os_ and m["platform"].get("architecture") == arch))]
            yield from _manifests(src, mine, label, own, depth + 1)
        elif mt in _OCI_MANIFEST or mt is None:
            yield d, own
        # anything else (attestations, signatures) is not an image


_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")


def _parse_time(value: Any) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (nanoseconds allowed), or None if it is not one.

    >>> _parse_time("1970-01-01T00:01:00.5Z"), _parse_time("1970-01-01T01:00:00+01:00"), _parse_time(3)
    (60.5, 0.0, None)
    """
    if not isinstance(value, str):
        return None
    m = _RFC3339.match(value)
    if not m:
        return None
    y, mo, d, hh, mi, ss = (int(x) for x in m.groups()[:6])
    frac = float("0" + m.group(7)) if m.group(7) else 0.0
    zone = m.group(8)
    offset = 0 if zone in ("Z", "z") else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    try:
        t = datetime.datetime(y, mo, d, hh, mi, ss, tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None
    return t - offset + frac


class _Hashing:
    """Reads through, hashing; ``verify`` reads what the extraction left and compares the digest."""

    def __init__(self, f: BinaryIO, want: str, size: int | None, label: str) -> None:
        self.f, self.want, self.size, self.label = f, want, size, label
        self.h = hashlib.sha256()
        self.n = 0
        self.head = b""

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if len(self.head) < 6:
            self.head += data[:6 - len(self.head)]
        self.h.update(data)
        self.n += len(data)
        return data

    def verify(self) -> None:
        while True:
            chunk = self.read(1 << 20)
            if not chunk:
                break
            if self.size is not None and self.n > self.size:
                break
        if self.h.hexdigest() != self.want.partition(":")[2] or (self.size is not None and self.n != self.size):
            raise _bad(self.label, f"does not match its digest {self.want[:19]}… (read {self.n} bytes)",
                       fix="the archive is corrupt or was tampered with")


def _chain(store: Any, steps: Sequence[tuple[str, Any, str | None, int | None]], *, label: str, kind: str,
           config: dict[str, Any], tag: str | None, compressed_digest: bool = False, **limits: Any) -> list[str]:
    """Import the layers in order, each on the previous; the top gets ``config`` and ``tag``. On any
    failure the layers already made are removed again (all or nothing)."""
    if not steps:
        raise _bad(f"image in {label}", "has no layers")
    history = [h for h in config.get("history") or [] if isinstance(h, dict) and not h.get("empty_layer")]
    if len(history) != len(steps):
        history = []
    img_config = ImageConfig.from_oci(config.get("config"))
    limits.pop("whiteouts", None)
    limits = store._limits(limits)
    ids: list[str] = []
    try:
        for n, (name, opener, digest, size) in enumerate(steps):
            last = n == len(steps) - 1
            layer_label = f"layer {n + 1}/{len(steps)} ({name[:80]!r}) of {label}"
            h = history[n] if history else {}
            by = h.get("created_by") if isinstance(h.get("created_by"), str) else None
            note = h.get("comment") if isinstance(h.get("comment"), str) else None

            def fill(target: str, opener: Any = opener, digest: str | None = digest, size: int | None = size,
                     layer_label: str = layer_label) -> None:
                with opener() as raw:
                    # a docker-archive layer's diff_id is the digest of the uncompressed tar (what docker
                    # save writes); an OCI layer's digest is the blob's, compressed or not
                    hashing = _Hashing(raw, digest, size, layer_label) if digest else None
                    tarsafe.extract(hashing or raw, target, whiteouts=True, name=layer_label, **limits)
                    if hashing is not None and (compressed_digest or archive.sniff(hashing.head) == "plain"):
                        hashing.verify()
            ids.append(store._build(fill, parent=ids[-1] if ids else None, tag=tag if last else None,
                                    created_by=by or f"labkit import {kind} {label} layer {n + 1}/{len(steps)}",
                                    comment=(note or f"{kind} layer {digest or name}")[:200],
                                    config=img_config if last else ImageConfig(),
                                    created=_parse_time(h.get("created"))))
    except BaseException:
        for i in reversed(ids):
            try:
                store.rmi(i)
            except errors.LabkitError:
                pass
        raise
    return ids

