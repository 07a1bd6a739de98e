"""A corpus of crafted hostile archives against labkit.images.tarsafe.extract.

Every case extracts into ``root`` next to a ``sentinel`` tree and asserts the sentinel (and everything
outside ``root``) is byte-for-byte unchanged; refused cases must name the offending member.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile

import pytest

from labkit import errors
from labkit.images.tarsafe import extract

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown, mknod")]


def _snapshot(top) -> dict[str, tuple]:
    out = {}
    for dirpath, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            digest = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_uid, st.st_size, digest, link)
    return out


def _f(name: str, data: bytes = b"data", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = len(data), mode
    return ti, data


def _sym(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = tarfile.SYMTYPE, target
    return ti, None


def _hard(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = tarfile.LNKTYPE, target
    return ti, None


def _dir(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode = tarfile.DIRTYPE, mode
    return ti, None


def _node(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode = kind, 0o666
    ti.devmajor, ti.devminor = (1, 3) if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE) else (0, 0)
    return ti, None


def _archive(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _pax_name(member, name: str):
    ti, data = member
    ti.pax_headers = {"path": name}     # ustar would cut the name at the NUL; a pax record carries it
    return ti, data


def _pax_link(member, target: str):
    ti, data = member
    ti.pax_headers = {"linkpath": target}
    return ti, data


def _huge_header() -> bytes:
    ti = tarfile.TarInfo("huge")
    ti.size = 1 << 40                         # declares 1 TiB, carries nothing
    return ti.tobuf(tarfile.GNU_FORMAT) + b"\0" * 1024


# (id, archive bytes builder, offending member or None if it must succeed, extra kwargs)
CORPUS = [
    ("absolute", lambda s: _archive([_f(f"{s}/abs")]), "{s}/abs", {}),
    ("dotdot", lambda s: _archive([_f("a/../../sentinel/pwn")]), "a/../../sentinel/pwn", {}),
    ("dotdot-only", lambda s: _archive([_f("../pwn")]), "../pwn", {}),
    ("symlink-relative-escape", lambda s: _archive([_sym("up", "../../sentinel")]), "up", {}),
    ("symlink-escape-write-through",
     lambda s: _archive([_sym("esc", s), _f("esc/pwned")]), "esc/pwned", {}),
    ("symlink-to-etc-then-file", lambda s: _archive([_sym("etc", "/etc"), _f("etc/passwd", b"root::0:0")]),
     "etc/passwd", {}),
    ("symlink-chain", lambda s: _archive([_dir("d"), _sym("d/l1", "../l2"), _sym("l2", s), _f("d/l1/x")]),
     "d/l1/x", {}),
    ("hardlink-escape-abs", lambda s: _archive([_hard("h", f"{s}/secret")]), "h", {}),
    ("hardlink-escape-dotdot", lambda s: _archive([_hard("h", "../sentinel/secret")]), "h", {}),
    ("hardlink-through-symlink", lambda s: _archive([_sym("l", s), _hard("h", "l/secret")]), "h", {}),
    ("dir-replaced-by-symlink",
     lambda s: _archive([_dir("a"), _f("a/ok"), _sym("a", s), _f("a/pwn")]), "a/pwn", {}),
    ("parent-is-a-file", lambda s: _archive([_f("f"), _f("f/child")]), "f/child", {}),
    ("huge-declared-size", lambda s: _huge_header(), "huge", {}),
    ("member-over-limit", lambda s: _archive([_f("big", b"x" * 5000)]), "big", {"max_member_size": 4096}),
    ("total-over-limit", lambda s: _archive([_f(f"f{i}", b"x" * 3000) for i in range(4)]), "f3",
     {"max_total_size": 10000}),
    ("too-many-members", lambda s: _archive([_f(f"m{i}") for i in range(60)]), "m50", {"max_members": 50}),
    ("long-name", lambda s: _archive([_f("d/" + "n" * 300)]), "d/" + "n" * 300, {}),
    ("nul-in-name", lambda s: _archive([_pax_name(_f("x"), "a\x00b")]), "a\x00b", {}),
    ("nul-in-symlink-target", lambda s: _archive([_pax_link(_sym("l", "x"), "ok\x00/etc")]), "l", {}),
    ("whiteout-escape", lambda s: _archive([_f("../.wh.sentinel")]), "../.wh.sentinel", {"whiteouts": True}),
    ("whiteout-through-symlink", lambda s: _archive([_sym("w", s), _f("w/.wh.secret", b"")]), "w/.wh.secret",
     {"whiteouts": True}),
    ("opaque-through-symlink", lambda s: _archive([_sym("o", s), _f("o/.wh..wh..opq", b"")]), "o/.wh..wh..opq",
     {"whiteouts": True}),
    ("hardlink-to-directory", lambda s: _archive([_dir("d"), _hard("h", "d")]), "h", {}),
    ("hardlink-before-target", lambda s: _archive([_hard("h", "later"), _f("later")]), "h", {}),
    ("symlink-then-hardlink-write", lambda s: _archive([_sym("t", f"{s}/secret"), _hard("x", "t"),
                                                       _f("x", b"overwrite")]), None, {}),
]

OK_CASES = [
    ("device-skipped", [_node("dev/null", tarfile.CHRTYPE)]),
    ("fifo-ok", [_node("run/fifo", tarfile.FIFOTYPE)]),
    ("setuid-stripped", [_f("bin/su", b"#!", 0o4755), _f("bin/sg", b"#!", 0o2755)]),
    ("absolute-symlink-kept", [_sym("etc/localtime", "/usr/share/zoneinfo/UTC")]),
]


@pytest.fixture
def place(tmp_path):
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "secret").write_text("do not touch")
    (sentinel / "sub").mkdir()
    (sentinel / "sub" / "f").write_text("nor me")
    root = tmp_path / "root"
    root.mkdir()
    return tmp_path, sentinel, root


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile(case, place) -> None:
    top, sentinel, root = place
    _name, build, offender, kw = case
    archive = top / "a.tar"
    archive.write_bytes(build(str(sentinel)))
    before = _snapshot(top)
    del before["a.tar"]
    if offender is None:
        extract(archive, root, **kw)
    else:
        offender = offender.format(s=str(sentinel))
        with pytest.raises(errors.InvalidArgument) as ei:
            extract(archive, root, **kw)
        assert repr(offender) in str(ei.value) or offender in str(ei.value), str(ei.value)
    after = _snapshot(top)
    del after["a.tar"]
    outside = {k: v for k, v in after.items() if not k.startswith("root/") and k != "root"}
    assert outside == {k: v for k, v in before.items() if not k.startswith("root/") and k != "root"}
    assert (sentinel / "secret").read_text() == "do not touch"
    assert not os.path.exists("/pwned") and not os.path.exists("/abs")


def test_symlink_then_hardlink_write_is_contained(place) -> None:
    top, sentinel, root = place
    (top / "a.tar").write_bytes(_archive([_sym("t", f"{sentinel}/secret"), _hard("x", "t"),
                                          _f("x", b"overwrite")]))
    extract(top / "a.tar", root)
    assert (root / "x").read_bytes() == b"overwrite" and os.readlink(root / "t") == f"{sentinel}/secret"


@pytest.mark.parametrize("case", OK_CASES, ids=[c[0] for c in OK_CASES])
def test_benign(case, place) -> None:
    top, _sentinel, root = place
    name, members = case
    (top / "a.tar").write_bytes(_archive(members))
    res = extract(top / "a.tar", root)
    if name == "device-skipped":
        assert not (root / "dev" / "null").exists() and res.skipped and "dev/null" in res.skipped[0]
    elif name == "fifo-ok":
        assert stat.S_ISFIFO(os.lstat(root / "run" / "fifo").st_mode)
    elif name == "setuid-stripped":
        assert stat.S_IMODE(os.stat(root / "bin" / "su").st_mode) == 0o755
        assert stat.S_IMODE(os.stat(root / "bin" / "sg").st_mode) == 0o755
        root2 = top / "root2"
        root2.mkdir()
        extract(top / "a.tar", root2, keep_setuid=True)
        assert stat.S_IMODE(os.stat(root2 / "bin" / "su").st_mode) == 0o4755
    else:
        assert os.readlink(root / "etc" / "localtime") == "/usr/share/zoneinfo/UTC"


def test_devices_when_allowed(place) -> None:
    top, _sentinel, root = place
    (top / "a.tar").write_bytes(_archive([_node("dev/null", tarfile.CHRTYPE)]))
    extract(top / "a.tar", root, allow_devices=True)
    st = os.lstat(root / "dev" / "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3


def test_compressed_and_whiteouts(place) -> None:
    top, _sentinel, root = place
    base = _archive([_dir("etc"), _f("etc/a"), _f("etc/b"), _dir("opq"), _f("opq/old")])
    import shutil
    import subprocess
    plain = _archive([_f("x", b"1")])
    if shutil.which("zstd"):
        (top / "c.tar.zst").write_bytes(subprocess.run(["zstd", "-c"], input=plain, capture_output=True,
                                                       check=True).stdout)
        d = top / "r-zst"
        d.mkdir()
        extract(top / "c.tar.zst", d)
        assert (d / "x").read_bytes() == b"1"
    for comp in ("gz", "xz", "bz2"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=f"w:{comp}") as tf:
            for ti, data in [_f("x", b"1")]:
                tf.addfile(ti, io.BytesIO(data))
        (top / f"c.tar.{comp}").write_bytes(buf.getvalue())
        d = top / f"r-{comp}"
        d.mkdir()
        extract(top / f"c.tar.{comp}", d)
        assert (d / "x").read_bytes() == b"1"
    (top / "base.tar").write_bytes(base)
    extract(top / "base.tar", root)
    layer = _archive([_f("etc/.wh.a", b""), _dir("opq"), _f("opq/.wh..wh..opq", b""), _f("opq/new")])
    (top / "layer.tar").write_bytes(layer)
    res = extract(top / "layer.tar", root, whiteouts=True)
    assert res.whiteouts == 2
    assert sorted(os.listdir(root / "etc")) == ["b"] and os.listdir(root / "opq") == ["new"]
