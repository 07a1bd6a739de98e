"""``ImageStore.save``: an image chain as an OCI or Docker image archive, or its flattened root filesystem.

An image is a chain of labkit images (base first); each becomes one layer, the diff of its tree against
its parent's (:func:`labkit.images.layers.write_layer`: whiteouts, opaque markers, deterministic tar).
An image whose content equals its parent's (a recipe's ``ENV`` or ``CMD`` step) adds no layer: its
history entry says ``empty_layer``, as Docker writes it. The top image's config (Env, Cmd, Entrypoint,
WorkingDir, User, Labels) and one history entry per image (``created_by``, ``comment``, ``created``) go
into the image config; ``rootfs.diff_ids`` are the sha256 of each uncompressed layer tar.

Formats (``format=``):

* ``oci-archive`` — an OCI image layout as a tar (image-spec ``image-layout.md``): ``oci-layout``,
  ``index.json`` (one manifest, named by the ``org.opencontainers.image.ref.name`` and
  ``io.containerd.image.name`` annotations), ``blobs/sha256/<hex>`` for the config, the manifest and the
  layers (``application/vnd.oci.image.layer.v1.tar+gzip``, or ``.tar`` with ``compress="none"``);
* ``docker-archive`` — what ``docker save`` / ``podman save`` write: ``manifest.json`` (Config,
  RepoTags, Layers), ``<hex>.json`` (the config) and ``<hex>.tar`` per layer (uncompressed by default);
* ``rootfs`` — the top image's whole tree as one tar, like ``docker export``.

Every file is reproducible (sorted members, owner 0, mode 0644/0755, mtime 0 in the outer tar; the
layers as :mod:`~labkit.images.layers` says), so saving the same image twice gives the same bytes.
Layers are staged in ``<store>/tmp/save-*`` (removed afterwards; ``check()`` removes what a crash left)
and the archive is written through :func:`~labkit.images.safeio.atomic_output`.

>>> store.save("app:v1", "/tmp/app.tar")                       # doctest: +SKIP
SaveReport(path='/tmp/app.tar', format='oci-archive', ..., layers=('sha256:…', 'sha256:…'), ...)
"""
from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import tarfile
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from .. import errors
from .formats import COMPRESSIONS, FORMATS
from .interop import host_platform
from .layers import Digesting, gzip_writer, write_layer
from .records import ImageConfig, SaveReport
from .reference import normalize
from .safeio import atomic_output, check_output, confined

if TYPE_CHECKING:
    from .store import ImageStore

__all__ = ["save", "FORMATS", "COMPRESSIONS"]

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class _Blob:
    path: str
    digest: str
    size: int
    diff_id: str
    media_type: str


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _time(ts: float) -> str:
    """RFC 3339 in UTC with microseconds, as the image spec's ``created`` wants."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _name_for(store: ImageStore, ref: str, image_id: str) -> str:
    """The name written into the archive: ``ref`` when it is one of the image's tags; for an id, none."""
    tags = store._tags(image_id)
    try:
        named = normalize(ref)
    except errors.InvalidArgument:
        return ""
    return named if named in tags else ""


def _layer_blob(scratch: str, n: int, root: str, parent_root: str | None, compress: str) -> tuple[_Blob, int]:
    """Write layer ``n`` to a file in ``scratch``; the blob and how many entries it holds."""
    path = os.path.join(scratch, f"layer-{n}")
    with open(path, "xb") as raw:
        blob = Digesting(raw)
        if compress == "gzip":
            with gzip_writer(blob) as gz:   # type: ignore[arg-type]
                diff = Digesting(gz)        # type: ignore[arg-type]
                stats = write_layer(diff, root, parent_root)   # type: ignore[arg-type]
            media = MT_LAYER + "+gzip"
        else:
            diff = Digesting(blob)          # type: ignore[arg-type]
            stats = write_layer(diff, root, parent_root)       # type: ignore[arg-type]
            media = MT_LAYER
    return _Blob(path, blob.digest, blob.n, diff.digest, media), stats.entries


def _config(store: ImageStore, chain: list[Any], diff_ids: list[str], empty: list[bool]) -> dict[str, Any]:
    top = chain[-1]
    os_, arch = host_platform()
    history = []
    for img, is_empty in zip(chain, empty):
        h: dict[str, Any] = {"created": _time(img.created), "created_by": img.created_by}
        if img.comment:
            h["comment"] = img.comment
        if is_empty:
            h["empty_layer"] = True
        history.append(h)
    return {"created": _time(top.created), "architecture": arch, "os": os_,
            "config": ImageConfig.from_json(json.loads(store._row(top.id)["config"] or "{}")).to_oci(),
            "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history}


def _tarinfo(name: str, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode, ti.uid, ti.gid, ti.uname, ti.gname, ti.mtime = (0o755 if directory else 0o644), 0, 0, "", "", 0
    if directory:
        ti.type = tarfile.DIRTYPE
    else:
        ti.size = size
    return ti


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    tf.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


def _add_file(tf: tarfile.TarFile, name: str, path: str, size: int) -> None:
    with open(path, "rb") as f:
        tf.addfile(_tarinfo(name, size), f)


def _write_oci(f: BinaryIO, blobs: list[_Blob], config: bytes, manifest: bytes, name: str) -> str:
    cfg_hex = Digesting()
    cfg_hex.write(config)
    man = Digesting()
    man.write(manifest)
    desc: dict[str, Any] = {"mediaType": MT_MANIFEST, "digest": man.digest, "size": len(manifest)}
    if name:
        desc["annotations"] = {"org.opencontainers.image.ref.name": name, "io.containerd.image.name": name}
    index = _json({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [desc]})
    entries: dict[str, tuple[str | None, bytes | None, int]] = {
        cfg_hex.digest[7:]: (None, config, len(config)), man.digest[7:]: (None, manifest, len(manifest))}
    for b in blobs:
        entries.setdefault(b.digest[7:], (b.path, None, b.size))
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(_tarinfo("blobs", directory=True))
        tf.addfile(_tarinfo("blobs/sha256", directory=True))
        for hexd in sorted(entries):
            path, data, size = entries[hexd]
            if data is not None:
                _add_bytes(tf, f"blobs/sha256/{hexd}", data)
            else:
                _add_file(tf, f"blobs/sha256/{hexd}", path, size)   # type: ignore[arg-type]
        _add_bytes(tf, "index.json", index)
        _add_bytes(tf, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
    return man.digest


def _write_docker(f: BinaryIO, blobs: list[_Blob], config: bytes, name: str) -> None:
    cfg = Digesting()
    cfg.write(config)
    manifest = _json([{"Config": f"{cfg.digest[7:]}.json", "RepoTags": [name] if name else [],
                       "Layers": [f"{b.digest[7:]}.tar" for b in blobs]}])
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add_bytes(tf, f"{cfg.digest[7:]}.json", config)
        done: set[str] = set()
        for b in sorted(blobs, key=lambda b: b.digest):
            if b.digest not in done:
                done.add(b.digest)
                _add_file(tf, f"{b.digest[7:]}.tar", b.path, b.size)
        _add_bytes(tf, "manifest.json", manifest)


def save(store: ImageStore, ref: str, path: str | os.PathLike[str], *, format: str = "oci-archive",
         compress: str | None = None) -> SaveReport:
    """Write image ``ref`` to ``path``; see the module docstring and :meth:`ImageStore.save`."""
    if format not in FORMATS:
        raise errors.InvalidArgument(f"save format {format!r}", "is not known", fix=f"use one of {', '.join(FORMATS)}")
    compress = compress or ("gzip" if format == "oci-archive" else "none")
    if compress not in COMPRESSIONS:
        raise errors.InvalidArgument(f"compression {compress!r}", "is not known",
                                     fix=f"use one of {', '.join(COMPRESSIONS)}")
    out = check_output(path)
    image_id = store.resolve(ref)
    name = _name_for(store, ref, image_id)
    chain = list(reversed(store.history(image_id)))          # base first
    snaps = [store._row(h.id)["snapshot"] for h in chain]
    if format == "rootfs":
        with store._view(snaps[-1]) as root, atomic_output(out) as f:
            if compress == "gzip":
                with gzip_writer(f) as gz:
                    write_layer(gz, root)           # type: ignore[arg-type]
            else:
                write_layer(f, root)
        return SaveReport(path=out, format=format, id=image_id, short_id=image_id[:12], name=name,
                          bytes=os.lstat(out).st_size, layers=(), diff_ids=(), config_digest="",
                          manifest_digest="", empty_layers=0)
    scratch = store._scratch("save-")
    try:
        blobs: list[_Blob] = []
        empty: list[bool] = []
        views: list[tuple[ExitStack, str]] = []
        try:
            for n, snap in enumerate(snaps):
                stack = ExitStack()
                views.append((stack, stack.enter_context(store._view(snap))))
                parent_root = views[-2][1] if len(views) > 1 else None
                blob, entries = _layer_blob(scratch, n, views[-1][1], parent_root, compress)
                if entries == 0 and parent_root is not None:
                    os.unlink(blob.path)
                    empty.append(True)
                else:
                    blobs.append(blob)
                    empty.append(False)
                if len(views) > 1:
                    views.pop(0)[0].close()
        finally:
            for stack, _ in views:
                stack.close()
        config = _json(_config(store, chain, [b.diff_id for b in blobs], empty))
        cfg = Digesting()
        cfg.write(config)
        manifest = _json({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                          "config": {"mediaType": MT_CONFIG, "digest": cfg.digest, "size": len(config)},
                          "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in blobs]})
        with atomic_output(out) as f:
            if format == "oci-archive":
                man_digest = _write_oci(f, blobs, config, manifest, name)
            else:
                _write_docker(f, blobs, config, name)
                man_digest = ""
    finally:
        shutil.rmtree(confined(scratch, store.root), ignore_errors=True)
    return SaveReport(path=out, format=format, id=image_id, short_id=image_id[:12], name=name,
                      bytes=os.lstat(out).st_size, layers=tuple(b.digest for b in blobs),
                      diff_ids=tuple(b.diff_id for b in blobs), config_digest=cfg.digest,
                      manifest_digest=man_digest, empty_layers=sum(empty))
