"""Host-side code never follows a symlink out of a container's root filesystem; names and ids never
make a path outside the state directory."""
from __future__ import annotations

import os
import secrets
import shutil

import pytest

from labkit import errors
from labkit.containers import inroot

pytestmark = pytest.mark.root


@pytest.fixture
def own_rootfs(rootfs, tmp_path):
    """A private copy of the busybox rootfs that a test may plant symlinks in."""
    d = tmp_path / "root"
    shutil.copytree(rootfs, d, symlinks=True)
    return str(d)


def _host_path() -> str:
    return f"/var/tmp/lk-escape-{secrets.token_hex(6)}"


def test_passwd_symlink_to_a_host_file_is_resolved_inside_the_rootfs(rt, own_rootfs):
    host = _host_path()
    with open(host, "w") as f:                   # what an escaping lookup would read
        f.write("nobody:x:4242:4242:host:/host:/bin/sh\n")
    try:
        passwd = os.path.join(own_rootfs, "etc", "passwd")
        os.unlink(passwd)
        os.symlink(host, passwd)                 # absolute: on the host it names the host file
        with pytest.raises(errors.NotFound, match="nobody"):
            rt.run(own_rootfs, ["id", "-u"], user="nobody")
        os.makedirs(os.path.join(own_rootfs, host.lstrip("/").rsplit("/", 1)[0]), exist_ok=True)
        with open(os.path.join(own_rootfs, host.lstrip("/")), "w") as f:   # the same path inside the rootfs
            f.write("nobody:x:5151:5151:inside:/:/bin/sh\n")
        c = rt.run(own_rootfs, ["id", "-u"], user="nobody")
        assert c.logs() == "5151\n" and c.state.uid == 5151
        os.unlink(passwd)
        os.symlink("../../../../../../.." + host, passwd)     # climbing out with .. is clamped to the root
        assert rt.run(own_rootfs, ["id", "-u"], user="nobody").logs() == "5151\n"
    finally:
        os.unlink(host)


def test_passwd_symlink_to_dev_zero_or_a_fifo_is_refused_not_read(rt, own_rootfs):
    passwd = os.path.join(own_rootfs, "etc", "passwd")
    os.unlink(passwd)
    os.symlink("/dev/zero", passwd)
    with pytest.raises(errors.NotFound):          # the rootfs has no /dev/zero: nothing to read
        rt.run(own_rootfs, ["true"], user="nobody")
    os.mknod(os.path.join(own_rootfs, "dev", "zero"), 0o666 | 0o020000, os.makedev(1, 5))
    with pytest.raises(errors.InvalidArgument, match="not a regular file"):
        rt.run(own_rootfs, ["true"], user="nobody")
    os.unlink(passwd)
    os.mkfifo(passwd)                             # opening a FIFO must not block
    with pytest.raises(errors.InvalidArgument, match="not a regular file"):
        rt.run(own_rootfs, ["true"], user="nobody")
    c = rt.run(own_rootfs, ["true"], user="1000:1000")      # numeric ids need no lookup on the host
    assert (c.exit_code, c.state.uid, c.state.gid) == (0, 1000, 1000)


def test_group_symlink_is_confined_too(rt, own_rootfs):
    host = _host_path()
    with open(host, "w") as f:
        f.write("hostgroup:x:4343:\n")
    try:
        group = os.path.join(own_rootfs, "etc", "group")
        os.unlink(group)
        os.symlink(host, group)
        with pytest.raises(errors.NotFound, match="group 'hostgroup'"):
            rt.run(own_rootfs, ["true"], user="0:hostgroup")
        os.unlink(group)
        os.symlink("/etc/group", group)           # points at itself inside the root: a loop, a clear error
        with pytest.raises(errors.InvalidArgument, match="symbolic links"):
            rt.run(own_rootfs, ["true"], user="0:root")
    finally:
        os.unlink(host)


def test_bind_target_symlink_to_a_host_path_is_created_inside(rt, own_rootfs, tmp_path):
    host = _host_path()
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "data").write_text("volume\n")
    os.symlink(host, os.path.join(own_rootfs, "mnt", "escape") if os.path.isdir(os.path.join(own_rootfs, "mnt"))
               else os.path.join(own_rootfs, "escape"))
    link = "/mnt/escape" if os.path.isdir(os.path.join(own_rootfs, "mnt")) else "/escape"
    try:
        c = rt.run(own_rootfs, ["cat", f"{link}/sub/data"], binds=[f"{vol}:{link}/sub"])
        assert c.logs() == "volume\n"
        assert not os.path.lexists(host)          # nothing was made on the host...
        assert os.path.isdir(os.path.join(own_rootfs, host.lstrip("/"), "sub"))   # ...but inside the rootfs
    finally:
        shutil.rmtree(host, ignore_errors=True)


def test_file_bind_target_symlink_to_a_host_file_does_not_cover_it(rt, own_rootfs, tmp_path):
    host = _host_path()
    with open(host, "w") as f:
        f.write("host file\n")
    src = tmp_path / "secret.txt"
    src.write_text("bound\n")
    try:
        os.symlink(host, os.path.join(own_rootfs, "etc", "motd"))
        c = rt.run(own_rootfs, ["sh", "-c", f"cat /etc/motd; cat {host}"], binds=[f"{src}:/etc/motd:ro"])
        assert c.logs() == "bound\nbound\n"       # the mount landed on the in-root target of the link
        with open(host) as f:
            assert f.read() == "host file\n"
        assert os.path.isfile(os.path.join(own_rootfs, host.lstrip("/")))
    finally:
        os.unlink(host)


def test_mount_points_for_proc_and_dev_are_confined(rt, own_rootfs):
    host = _host_path()
    shutil.rmtree(os.path.join(own_rootfs, "proc"))
    os.symlink(host, os.path.join(own_rootfs, "proc"))    # /proc -> a host path
    try:
        c = rt.run(own_rootfs, ["sh", "-c", "grep -c . /proc/self/status >/dev/null && echo proc-ok"])
        assert c.logs() == "proc-ok\n"
        assert not os.path.lexists(host)
    finally:
        shutil.rmtree(host, ignore_errors=True)


def test_inroot_helpers(tmp_path):
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "f").write_text("inside")
    os.symlink("/etc/f", root / "abs")
    os.symlink("../../../../etc/f", root / "rel")
    rfd = inroot.open_root(str(root))
    try:
        assert inroot.read_file(rfd, "/abs") == b"inside" and inroot.read_file(rfd, "rel") == b"inside"
        assert inroot.read_file(rfd, "/nope") is None
        (root / "big").write_bytes(b"x" * 100)
        with pytest.raises(OSError, match="larger"):
            inroot.read_file(rfd, "big", limit=10)
        os.close(inroot.touch(rfd, "/a/b/c"))
        assert (root / "a" / "b" / "c").is_file()
        with pytest.raises(IsADirectoryError):
            inroot.touch(rfd, "/a/b")
        nowhere = _host_path()
        os.symlink(nowhere, root / "dangling")           # dangling: its target is made inside the root
        os.close(inroot.mkdir_all(rfd, "/dangling/x"))
        assert (root / nowhere.lstrip("/") / "x").is_dir() and not os.path.lexists(nowhere)
        os.symlink("loop", root / "loop")
        with pytest.raises(OSError, match="symbolic links"):
            inroot.mkdir_all(rfd, "/loop/x")
    finally:
        os.close(rfd)


@pytest.mark.parametrize("bad", ["", "-x", ".hidden", "a/b", "../etc", "a b", "x\n", "é", "x" * 129, "a:b"])
def test_bad_container_names_are_refused(rt, rootfs, bad):
    with pytest.raises(errors.InvalidArgument, match="container name"):
        rt.run(rootfs, ["true"], name=bad)
    with pytest.raises(errors.InvalidArgument, match="container name"):
        rt.get(bad)
    assert rt.ps() == []


def test_good_names_and_long_names(rt, rootfs):
    c = rt.run(rootfs, ["hostname"], name="a" * 128)
    assert c.name == "a" * 128 and c.logs() == f"{c.id}\n"     # longer than a hostname may be: the id
    c = rt.run(rootfs, ["hostname"], name="Web_1.2-x")
    assert c.logs() == "Web_1.2-x\n" and rt.get("Web_1.2-x").id == c.id


def test_state_paths_stay_inside_the_state_dir(rt, tmp_path):
    with pytest.raises(errors.InvalidArgument):
        rt._dir("../../etc")
    with pytest.raises(errors.InvalidArgument):
        rt._remove_dir("../x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    os.symlink(outside, os.path.join(rt.state_dir, "0123456789"))    # a planted symlink with an id's name
    assert rt.list() == []
    rt._remove_dir("0123456789")                 # removes the link, never what it points to
    assert (outside / "keep").exists() and not os.path.lexists(os.path.join(rt.state_dir, "0123456789"))
