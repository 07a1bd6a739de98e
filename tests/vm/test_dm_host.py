"""labkit._sys.dm and the dmthin backend's helpers on a host without device-mapper: the ioctl structures
(packed and parsed from buffers shaped like the kernel's answers), the sparse copy of pool files and the
template directory's checks. The calls themselves run against the kernel in the VM (guest_dm.py)."""
from __future__ import annotations

import os
import stat
import struct

import pytest

from labkit._sys import dm
from labkit.snapshots import dmthin


def _hdr(**kw: object) -> tuple:
    fields = dict(zip(("v0", "v1", "v2", "data_size", "data_start", "target_count", "open_count", "flags",
                       "event_nr", "padding", "dev", "name", "uuid", "data"), dm._header("x")))
    fields.update(kw)
    return tuple(fields.values())


def test_request_numbers_and_header_layout() -> None:
    assert dm._req(dm.DM_DEV_CREATE) == 0xC138FD03 and dm._req(dm.DM_TARGET_MSG) == 0xC138FD0E
    assert dm._HDR.size == 312 and dm._SPEC.size == 40
    h = dm._header("labkit-x-pool", flags=dm.DM_READONLY_FLAG, target_count=1)
    assert h[:3] == (4, 0, 0) and h[4] == 312 and h[5] == 1 and h[7] == dm.DM_READONLY_FLAG
    for bad in ("a/b", "x" * 128, "nul\0"):
        with pytest.raises(ValueError):
            dm._header(bad)


def test_list_devices_and_targets_parse_the_kernels_chains(monkeypatch) -> None:
    def name_list(entries: list[tuple[int, str]]) -> bytes:
        out = b""
        for i, (dev, name) in enumerate(entries):
            body = name.encode() + b"\0"
            size = (dm._NAME_LIST.size + len(body) + 8 + 7) // 8 * 8      # name, then event_nr and flags
            nxt = size if i < len(entries) - 1 else 0
            out += (dm._NAME_LIST.pack(dev, nxt) + body).ljust(size, b"\0")
        return out

    def versions(entries: list[tuple[str, tuple[int, int, int]]]) -> bytes:
        out = b""
        for i, (name, v) in enumerate(entries):
            body = name.encode() + b"\0"
            size = (dm._VERSIONS.size + len(body) + 7) // 8 * 8
            nxt = size if i < len(entries) - 1 else 0
            out += (dm._VERSIONS.pack(nxt, *v) + body).ljust(size, b"\0")
        return out

    answers = {dm.DM_LIST_DEVICES: name_list([(0xFD00, "labkit-ab-pool"), (0xFD01, "labkit-ab-1")]),
               dm.DM_LIST_VERSIONS: versions([("thin-pool", (1, 22, 0)), ("thin", (1, 22, 0)), ("linear", (1, 4, 0))])}
    monkeypatch.setattr(dm, "available", lambda: True)
    monkeypatch.setattr(dm, "_full", lambda nr, name="", flags=0: (_hdr(), answers[nr]))
    assert dm.list_devices() == {"labkit-ab-pool": 0xFD00, "labkit-ab-1": 0xFD01}
    assert dm.targets() == {"thin-pool": "1.22.0", "thin": "1.22.0", "linear": "1.4.0"}
    answers[dm.DM_LIST_DEVICES] = struct.pack("=QI", 0, 0)        # "no devices": dev 0
    assert dm.list_devices() == {}


def test_status_reads_the_first_target(monkeypatch) -> None:
    text = b"0 1650/16384 144/16384 - rw discard_passdown queue_if_no_space - 1024 \0"
    data = dm._SPEC.pack(0, 2097152, 0, 0, b"thin-pool") + text
    monkeypatch.setattr(dm, "_full", lambda nr, name="", flags=0: (_hdr(target_count=1), data))
    assert dm.status("p") == "0 2097152 thin-pool " + text[:-1].decode()
    monkeypatch.setattr(dm, "_full", lambda nr, name="", flags=0: (_hdr(target_count=0), b""))
    assert dm.status("p") == ""


def test_without_device_mapper_nothing_is_listed() -> None:
    if dm.available():
        pytest.skip("this host has device-mapper")
    assert dm.list_devices() == {}
    assert dmthin._dm_leftovers("/nonexistent/store", False) == []
    assert dmthin._dm_mounts("/nonexistent/store", True) == []


def test_sparse_copy_keeps_holes_and_refuses_to_overwrite(tmp_path) -> None:
    src, dst = tmp_path / "data", tmp_path / "copy"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(b"a" * 4096)
        f.seek(40 << 20)
        f.write(b"b" * 8192)
    dmthin._copy_sparse(str(src), str(dst))
    assert dst.read_bytes() == src.read_bytes()
    assert os.stat(dst).st_blocks * 512 <= 1 << 20, "the copy filled the holes"
    with pytest.raises(FileExistsError):
        dmthin._copy_sparse(str(src), str(dst))


@pytest.mark.root
def test_template_directory_must_be_roots_alone(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (owner checks)")
    good = tmp_path / "good"
    assert dmthin._safe_dir(str(good), make=True) and stat.S_IMODE(os.stat(good).st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    link = tmp_path / "link"
    link.symlink_to(good)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 1000, 1000)
    assert not any(dmthin._safe_dir(str(p)) for p in (loose, link, theirs, tmp_path / "missing"))
