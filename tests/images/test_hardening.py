"""Hardening of the image store's edges: malformed archives are one line, privileged xattrs are dropped,
limits follow free space (a gzip bomb never fills a disk), names and ids are validated, paths stay in
the store, exports never follow a symlink, and labkit.images stays free of pandas."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib

import pytest

from labkit import errors
from labkit._sys import mounts as sysmounts
from labkit.images import tarsafe
from labkit.images.safeio import atomic_output, confined
from labkit.images.tarsafe import extract, space_limits

EXPECTED = "expected a tar archive"


def _tar(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _f(name: str, data: bytes = b"data", pax: dict | None = None):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = len(data), 0o644
    if pax:
        ti.pax_headers = pax
    return ti, data


@pytest.fixture
def store(copy_store):
    return copy_store


# ---- malformed archives --------------------------------------------------------------------------------
def _valid() -> bytes:
    return _tar([_f(f"f{i}", os.urandom(20_000)) for i in range(4)])


def _flip(data: bytes, start: int = 200) -> bytes:
    b = bytearray(data)
    for i in range(start, len(b), 997):
        b[i] ^= 0xFF
    return bytes(b)


def _crc(gz: bytes) -> bytes:
    """The gzip trailer's CRC32 damaged: tarfile alone would never notice (it stops at the tar's end)."""
    return gz[:-8] + bytes([gz[-8] ^ 0xFF]) + gz[-7:]


MALFORMED = [
    ("random.tar", lambda: os.urandom(100_000), "not a tar archive"),
    ("empty.tar", lambda: b"", "is empty"),
    ("short.tar", lambda: _valid()[:100], "shorter than one 512-byte tar header"),
    ("cut-in-data.tar", lambda: _valid()[:30_000], "unexpected end of data"),
    ("cut-in-header.tar", lambda: _valid()[:20_992 + 300], "header block cut short"),
    ("garbage-after-member.tar", lambda: _valid()[:20_992] + os.urandom(3000), "damaged header block"),
    ("cut.tar.gz", lambda: gzip.compress(_valid())[:40_000], "gzip stream is cut short"),
    ("corrupt.tar.gz", lambda: _flip(gzip.compress(_valid())), "gzip stream is corrupt|damaged header block"),
    ("bad-crc.tar.gz", lambda: _crc(gzip.compress(_valid())), "gzip stream is corrupt .*CRC"),
    ("cut.tar.xz", lambda: lzma.compress(_valid())[:40_000], "xz stream is cut short"),
    ("corrupt.tar.bz2", lambda: _flip(bz2.compress(_valid())), "bzip2 stream is corrupt"),
    ("not-tar-inside.tar.gz", lambda: gzip.compress(os.urandom(5000)),
     "gzip-compressed data, but what it holds is not"),
    ("named-gz-but-random.tar.gz", lambda: os.urandom(5000), "its name says gzip"),
    ("empty-gzip.tar.gz", lambda: gzip.compress(b""), "decompresses to 0 bytes"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_archive_is_one_line(case, tmp_path) -> None:
    name, build, says = case
    path = tmp_path / name
    path.write_bytes(build())
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(errors.InvalidArgument) as ei:
        extract(path, root)
    msg = str(ei.value)
    assert "\n" not in msg and repr(str(path)) in msg and re.search(says, msg) and EXPECTED in msg, msg


def test_misnamed_compression_is_read_by_content(tmp_path) -> None:
    path = tmp_path / "really-xz.tar.gz"
    path.write_bytes(lzma.compress(_valid()))
    root = tmp_path / "root"
    root.mkdir()
    assert extract(path, root).members == 4


@pytest.mark.skipif(not shutil.which("zstd"), reason="zstd tool not installed (apt-get install zstd)")
def test_truncated_zstd(tmp_path) -> None:
    z = subprocess.run(["zstd", "-c"], input=_valid(), capture_output=True, check=True).stdout
    (tmp_path / "cut.tar.zst").write_bytes(z[: len(z) // 2])
    (tmp_path / "root").mkdir()
    with pytest.raises(errors.InvalidArgument, match="zstd stream is corrupt"):
        extract(tmp_path / "cut.tar.zst", tmp_path / "root")


def test_directory_or_fifo_where_a_file_was_expected(tmp_path) -> None:
    (tmp_path / "root").mkdir()
    with pytest.raises(errors.InvalidArgument, match=r"is a directory.*expected a tar archive"):
        extract(tmp_path, tmp_path / "root")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(errors.InvalidArgument, match="is not a regular file"):
        extract(tmp_path / "fifo", tmp_path / "root")
    with pytest.raises(errors.NotFound):
        extract(tmp_path / "absent.tar", tmp_path / "root")


@pytest.mark.parametrize("name", ["random.tar", "empty.tar", "cut.tar.gz"])
def test_cli_import_of_junk_is_one_line(tmp_path, name) -> None:
    """`labkit image import junk.tar` used to print a tarfile traceback; now its error is one line."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the Lab mounts")
    src = tmp_path / name
    src.write_bytes({"random.tar": os.urandom(3000), "empty.tar": b"",
                     "cut.tar.gz": gzip.compress(_valid())[:30_000]}[name])
    r = subprocess.run([sys.executable, "-m", "labkit.cli", "image", "import", str(src), "--root",
                        str(tmp_path / "lab"), "--backend", "copy"], capture_output=True, text=True)
    errs = [line for line in r.stderr.splitlines() if line.startswith("labkit:")]
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(errs) == 1, r.stderr
    assert str(src) in errs[0] and EXPECTED in errs[0]


# ---- privileged xattrs -------------------------------------------------------------------------------
def _cap_net_raw() -> str:
    # struct vfs_cap_data, revision 2, effective bit set, CAP_NET_RAW (13) permitted
    raw = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    return raw.decode("utf-8", "surrogateescape")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: security.* and trusted.* xattrs")
def test_privileged_xattrs_dropped_unless_asked(tmp_path) -> None:
    pax = {"SCHILY.xattr.security.capability": _cap_net_raw(), "SCHILY.xattr.trusted.overlay.opaque": "y",
           "SCHILY.xattr.user.note": "kept"}
    (tmp_path / "a.tar").write_bytes(_tar([_f("ping", b"\x7fELF", pax)]))
    (tmp_path / "r1").mkdir()
    res = extract(tmp_path / "a.tar", tmp_path / "r1")
    p = str(tmp_path / "r1" / "ping")
    assert os.listxattr(p) == ["user.note"]
    assert len([s for s in res.skipped if "dropped" in s]) == 2
    (tmp_path / "r2").mkdir()
    extract(tmp_path / "a.tar", tmp_path / "r2", keep_privileged_xattrs=True)
    p2 = str(tmp_path / "r2" / "ping")
    assert sorted(os.listxattr(p2)) == ["security.capability", "trusted.overlay.opaque", "user.note"]
    assert os.getxattr(p2, "security.capability") == _cap_net_raw().encode("utf-8", "surrogateescape")


# ---- limits from free space, gzip bombs -----------------------------------------------------------------
class _FakeStatvfs:
    def __init__(self, *, frsize=4096, blocks, bavail, files, favail, bsize=4096):
        self.f_frsize, self.f_blocks, self.f_bavail, self.f_bfree = frsize, blocks, bavail, bavail
        self.f_files, self.f_favail, self.f_ffree, self.f_bsize = files, favail, favail, bsize


def test_default_limits_derive_from_free_space(monkeypatch) -> None:
    # a 20 GiB course VM disk with 3 GiB free and 500k free inodes
    fake = _FakeStatvfs(blocks=(20 << 30) // 4096, bavail=(3 << 30) // 4096, files=1_300_000, favail=500_000)
    monkeypatch.setattr(tarsafe.os, "statvfs", lambda p: fake)
    lim = space_limits("/anywhere")
    assert lim.min_free_bytes == tarsafe.MARGIN_MAX                       # 5% of 20 GiB, capped at 256 MiB
    assert lim.max_total_size == lim.max_member_size == (3 << 30) - (256 << 20)
    assert lim.max_members == 500_000 - 10_000 and lim.min_free_inodes == 10_000
    # a small filesystem: 5% margin; nearly full: nothing fits
    fake2 = _FakeStatvfs(blocks=(64 << 20) // 4096, bavail=(2 << 20) // 4096, files=0, favail=0)
    monkeypatch.setattr(tarsafe.os, "statvfs", lambda p: fake2)
    lim2 = space_limits("/small")
    assert lim2.min_free_bytes == (64 << 20) // 20 and lim2.max_total_size == 0
    assert lim2.max_members == tarsafe.DEFAULT_LIMITS["max_members"]      # no inode count (btrfs): the cap


def _write_bomb(path, *, member_bytes: int, members: int = 1) -> int:
    """A tar.gz of ``members`` files of zeros, streamed through gzip (never the whole thing in memory)."""
    zero = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as gz:
        for i in range(members):
            ti = tarfile.TarInfo(f"zeros{i}")
            ti.size = member_bytes
            gz.write(ti.tobuf(tarfile.GNU_FORMAT))
            left = member_bytes
            while left:
                n = min(left, len(zero))
                gz.write(zero[:n])
                left -= n
            gz.write(bytes(-member_bytes % 512))
        gz.write(bytes(1024))
    return os.path.getsize(path)


@pytest.fixture
def small_fs(tmp_path):
    """A 32 MiB tmpfs of our own (the 'course VM disk' scaled down)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs")
    mnt = tmp_path / "smallfs"
    mnt.mkdir()
    sysmounts.mount("tmpfs", str(mnt), "tmpfs", 0, "size=32m,nr_inodes=4096,mode=0700")
    try:
        yield mnt
    finally:
        sysmounts.umount(str(mnt), sysmounts.MNT_DETACH)


def _free(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.mark.root
def test_gzip_bomb_refused_before_the_disk_fills(tmp_path, small_fs) -> None:
    """256 MiB of zeros in ~0.3 MiB of gzip (4 GiB scaled to a 32 MiB disk): refused, nothing fills up."""
    bomb = tmp_path / "bomb.tar.gz"
    assert _write_bomb(bomb, member_bytes=256 << 20) < 2 << 20
    root = small_fs / "root"
    root.mkdir()
    with pytest.raises(errors.InvalidArgument, match=r"zeros0.*over the per-member limit"):
        extract(bomb, root)
    # the same bytes cut into 1 MiB members: refused by the running total, while streaming
    bomb2 = tmp_path / "bomb2.tar.gz"
    _write_bomb(bomb2, member_bytes=1 << 20, members=256)
    with pytest.raises(errors.InvalidArgument, match="brings the total past the limit"):
        extract(bomb2, root)
    assert _free(small_fs) >= space_limits(small_fs).min_free_bytes


@pytest.mark.root
def test_many_small_files_stop_at_the_margin(tmp_path, small_fs) -> None:
    """Block rounding is not in the apparent total (3000 files of 1 byte = 3 kB apparent, 12 MiB on
    tmpfs): the free-space poll stops the extraction before the margin is eaten."""
    root = small_fs / "root"
    root.mkdir()
    # leave ~6 MiB free, so that 3000 pages overflow it
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        f.write(bytes(_free(small_fs) - (6 << 20)))
    margin = space_limits(small_fs).min_free_bytes
    (tmp_path / "many.tar").write_bytes(_tar([_f(f"d/{i}", b"x") for i in range(3000)]))
    with pytest.raises(errors.InvalidArgument, match=r"would fill the filesystem|inodes"):
        extract(tmp_path / "many.tar", root)
    assert _free(small_fs) >= margin * 3 // 4


# ---- names, ids, paths ----------------------------------------------------------------------------------
@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts")
def test_tags_and_ids_are_validated(store, tmp_path) -> None:
    (tmp_path / "t.tar").write_bytes(_tar([_f("f")]))
    img = store.import_tar(tmp_path / "t.tar", tag="ok/name_1:v1.0")
    for bad in ("Upper:1", "a:b:c", "../x", "x:" + "t" * 129, "-lead", "a//b", "a:-x", "a" * 64, "na me", "a\nb",
                "x@sha256:" + "0" * 64):
        with pytest.raises(errors.InvalidArgument) as ei:
            store.tag(img, bad)
        assert "\n" not in str(ei.value) and ("a valid" in str(ei.value) or "digest" in str(ei.value)
                                              or "reads as an image id" in str(ei.value)), str(ei.value)
    for bad in ("../../etc", "sha256:xyz!", "A" * 65, "/abs", "x y"):
        with pytest.raises(errors.InvalidArgument, match="neither a name\\[:tag\\] nor an image id"):
            store.resolve(bad)
    assert store.resolve("sha256:" + img[:10]) == img == store.resolve(img)
    with pytest.raises(errors.NotFound):
        store.resolve("f" * 64 if not img.startswith("f") else "0" * 64)


def test_confined() -> None:
    assert confined("/var/tmp/x/../x", "/var/tmp") == os.path.realpath("/var/tmp/x")
    for p in ("/var/tmp/../etc", "/etc", "/var/tmpx"):
        with pytest.raises(errors.InvalidArgument, match="outside the image store"):
            confined(p, "/var/tmp")


def test_confined_resolves_symlinks(tmp_path) -> None:
    (tmp_path / "store").mkdir()
    os.symlink("/etc", tmp_path / "store" / "tmp")
    with pytest.raises(errors.InvalidArgument, match="outside the image store"):
        confined(tmp_path / "store" / "tmp" / "x", str(tmp_path / "store"))


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts")
def test_store_never_works_through_a_planted_symlink(store, tmp_path) -> None:
    """<root>/tmp replaced by a symlink to a host directory: the store refuses instead of mounting there."""
    victim = tmp_path / "victim"
    victim.mkdir()
    os.symlink(victim, os.path.join(store.root, "tmp"))
    (tmp_path / "t.tar").write_bytes(_tar([_f("f")]))
    with pytest.raises(errors.InvalidArgument, match="outside the image store"):
        store.import_tar(tmp_path / "t.tar")
    assert os.listdir(victim) == [] and [i.name for i in store.sn.walk()] == []


def test_atomic_output_replaces_a_symlink_and_leaves_nothing_on_failure(tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("keep")
    os.symlink(secret, tmp_path / "out.tar")
    with atomic_output(tmp_path / "out.tar") as f:
        f.write(b"new")
    assert not os.path.islink(tmp_path / "out.tar") and secret.read_text() == "keep"
    assert (tmp_path / "out.tar").read_bytes() == b"new" and (os.stat(tmp_path / "out.tar").st_mode & 0o777) == 0o600
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "other.tar") as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["out.tar", "secret"]
    with pytest.raises(errors.InvalidArgument, match="is a directory"):
        with atomic_output(tmp_path) as f:
            pass


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts")
def test_export_through_symlink_and_malformed_import(store, tmp_path) -> None:
    (tmp_path / "t.tar").write_bytes(_tar([_f("f", b"hello")]))
    store.import_tar(tmp_path / "t.tar", tag="t")
    secret = tmp_path / "secret"
    secret.write_text("keep")
    os.symlink(secret, tmp_path / "out.tar")
    n = store.export("t", tmp_path / "out.tar")
    assert secret.read_text() == "keep" and not os.path.islink(tmp_path / "out.tar")
    assert n == os.path.getsize(tmp_path / "out.tar")
    with tarfile.open(tmp_path / "out.tar") as tf:
        assert tf.getnames() == [".", "f"]                # the root travels with its owner and mode
    # malformed imports: one line, and no snapshot, row or scratch directory left
    (tmp_path / "junk.tar").write_bytes(os.urandom(10_000))
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "dir.tar").mkdir()
    for bad, says in (("junk.tar", "not a tar archive"), ("empty.tar", "is empty"), ("dir.tar", "is a directory")):
        with pytest.raises(errors.InvalidArgument, match=says):
            store.import_tar(tmp_path / bad)
    (tmp_path / "cut.tar.gz").write_bytes(gzip.compress(_valid())[:30_000])
    with pytest.raises(errors.InvalidArgument, match="cut short"):
        store.import_tar(tmp_path / "cut.tar.gz")
    assert len(store.images()) == 1 and len(list(store.sn.walk())) == 1 and store.check().ok


def test_images_package_does_not_import_pandas() -> None:
    code = ("import sys, labkit.images, labkit.images.store, labkit.images.interop; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'numpy')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_zlib_error_names_the_archive(tmp_path) -> None:
    # a gzip member whose deflate data is garbage from the first byte
    head = gzip.compress(b"")[:10]
    (tmp_path / "z.tar.gz").write_bytes(head + zlib.compress(b"x")[2:] + os.urandom(2000))
    (tmp_path / "root").mkdir()
    with pytest.raises(errors.InvalidArgument, match=r"z\.tar\.gz.*gzip stream"):
        extract(tmp_path / "z.tar.gz", tmp_path / "root")
