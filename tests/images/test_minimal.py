"""labkit.images.minimal without a store: applications, the trace parser, resolution inside a hostile root,
the copy, ELF interpreters, the package cache's own checks. Quick; the images themselves are built in
tests/test_minimal_image.py."""
from __future__ import annotations

import hashlib
import os
import stat
import struct
import subprocess

import pytest

from labkit import errors
from labkit.images import minimal
from labkit.images.minimal import (
    APPS,
    App,
    PackageCache,
    closure,
    copy_closure,
    count_files,
    elf_interpreter,
    first_write,
    install_command,
    packages_rootfs,
    parse_trace,
    shebang_interpreter,
    trace_command,
    which,
)


# ---- applications ------------------------------------------------------------------------------------------------
def test_builtin_apps_are_debian_packages_with_a_check() -> None:
    assert len(APPS) >= 3
    for app in APPS.values():
        assert app.package and app.command and app.expect
        assert app.check(0, f"... {app.expect} ...") and not app.check(1, app.expect) and not app.check(0, "")


@pytest.mark.parametrize("kw", [
    {"package": "../etc"}, {"package": "Hello"}, {"package": "a b"}, {"command": ()}, {"command": "hello"},
    {"command": ("hello", "")}, {"expect": ""}, {"name": "../x"},
])
def test_app_refuses_malformed_descriptions(kw) -> None:
    fields = {"name": "x", "package": "hello", "command": ("hello",), "expect": "Hello"} | kw
    with pytest.raises(errors.InvalidArgument):
        App(**fields)


def test_commands_keep_the_application_argv_out_of_the_shell() -> None:
    app = App("evil", "hello", ("hello", "; rm -rf / #", "$(reboot)"), "x")
    cmd = trace_command(app)
    assert cmd[:2] == ["sh", "-c"] and cmd[3:] == ["sh", "hello", "; rm -rf / #", "$(reboot)"]
    assert '"$@"' in cmd[2] and "strace -f" in cmd[2] and "-xx" in cmd[2]
    assert install_command(["hello", "python3"])[2].count("install hello python3") == 1
    with pytest.raises(errors.InvalidArgument):
        install_command(["hello; reboot"])


def test_packages_rootfs_refuses_before_running_anything(tmp_path) -> None:
    cache = PackageCache(str(tmp_path / "cache"))
    with pytest.raises(errors.InvalidArgument):
        packages_rootfs(cache, "x y", str(tmp_path / "new"))
    (tmp_path / "there").mkdir()
    with pytest.raises(errors.AlreadyExists):
        packages_rootfs(cache, "hello", str(tmp_path / "there"))


# ---- the trace -------------------------------------------------------------------------------------------------------
def h(s: str) -> str:
    """A string as strace -xx prints it."""
    return "".join(f"\\x{b:02x}" for b in s.encode())


#: strace 6.1's own output for `hello` in a Debian container (-f -qq -s 65535 -xx -y)
REAL = f"""\
50    execve("{h('/usr/bin/hello')}", ["{h('hello')}"], 0x7ffe9d3aea28 /* 4 vars */) = 0
50    access("{h('/etc/ld.so.preload')}", R_OK) = -1 ENOENT (No such file or directory)
50    openat(AT_FDCWD<{h('/')}>, "{h('/etc/ld.so.cache')}", O_RDONLY|O_CLOEXEC) = 3<{h('/etc/ld.so.cache')}>
50    newfstatat(3<{h('/etc/ld.so.cache')}>, "", {{st_mode=S_IFREG|0644, st_size=4975, ...}}, AT_EMPTY_PATH) = 0
50    openat(AT_FDCWD<{h('/')}>, "{h('/lib/x86_64-linux-gnu/libc.so.6')}", O_RDONLY|O_CLOEXEC) = 3<{h('/usr/lib/x86_64-linux-gnu/libc.so.6')}>
50    newfstatat(1<{h('/var/tmp/host/containers/x/log')}>, "", {{st_mode=S_IFREG|0640, st_size=74, ...}}, AT_EMPTY_PATH) = 0
50    +++ exited with 0 +++
"""  # noqa: E501 - strace's own lines, verbatim


def test_parse_a_real_trace() -> None:
    assert parse_trace(REAL) == {"/usr/bin/hello", "/etc/ld.so.preload", "/etc/ld.so.cache",
                                 "/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"}


def test_parse_relative_paths_dirfds_chdir_children_and_interrupted_calls() -> None:
    text = "\n".join([
        (f'10 openat(3<{h("/usr/lib/python3.11")}>, "{h("json/__init__.py")}", O_RDONLY) = '
         f'4<{h("/usr/lib/python3.11/json/__init__.py")}>'),
        f'10 chdir("{h("/srv")}") = 0',
        f'10 access("{h("data/x")}", R_OK) = -1 ENOENT (No such file or directory)',
        '10 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD <unfinished ...>',
        '11 --- SIGSTOP {si_signo=SIGSTOP} ---',
        '10 <... clone resumed>, child_tidptr=0x7f) = 11',
        f'11 stat("{h("inherited")}", 0x7ffd) = 0',
        f'11 openat(AT_FDCWD<{h("/var/www")}>, "{h("index.html")}", O_RDONLY <unfinished ...>',
        f'10 readlink("{h("/proc/self/exe")}", "{h("/usr/bin/python3.11")}", 4096) = 19',
        f'11 <... openat resumed>) = 5<{h("/var/www/index.html")}>',
        f'12 execve("{h("/bin/sh")}", ["{h("/not/a/path")}", "{h("-c")}"], 0x1 /* 2 vars */) = 0',
        f'13 mkdir("{h("/a")}\\"", 0777) = 0',      # a broken line: no crash
        'garbage without a pid',
        f'14 openat(AT_FDCWD<{h("/")}>, "{h("/bad" + chr(0) + "nul")}", O_RDONLY) = -1 ENOENT',
    ])
    got = parse_trace(text)
    assert {"/usr/lib/python3.11/json/__init__.py", "/srv/data/x", "/srv/inherited", "/var/www/index.html",
            "/proc/self/exe", "/usr/bin/python3.11", "/bin/sh"} <= got
    assert "/not/a/path" not in got and "/-c" not in got               # argv is not a path
    assert not any("\0" in p for p in got) and all(p.startswith("/") for p in got)


def test_parse_hostile_names_stay_names() -> None:
    name = '/etc/a"b\n) = 3<' + h("/") + ">"
    got = parse_trace(f'1 openat(AT_FDCWD<{h("/")}>, "{h(name)}", O_RDONLY) = -1 ENOENT')
    assert got == {name}


# ---- a hostile root --------------------------------------------------------------------------------------------
def fake_elf(interp: str | None, *, bits: int = 64, endian: str = "<", phnum: int = 1,
             filesz: int | None = None) -> bytes:
    data = (interp or "").encode() + b"\0"
    size = len(data) if filesz is None else filesz
    if bits == 64:
        ehdr = bytearray(64)
        ehdr[:6] = b"\x7fELF" + bytes([2, 1 if endian == "<" else 2])
        struct.pack_into(endian + "Q", ehdr, 0x20, 64)
        struct.pack_into(endian + "HH", ehdr, 0x36, 56, phnum)
        ph = bytearray(56)
        struct.pack_into(endian + "I", ph, 0, 3 if interp else 1)
        struct.pack_into(endian + "Q", ph, 8, 64 + 56 * phnum)
        struct.pack_into(endian + "Q", ph, 0x20, size)
    else:
        ehdr = bytearray(52)
        ehdr[:6] = b"\x7fELF" + bytes([1, 1 if endian == "<" else 2])
        struct.pack_into(endian + "I", ehdr, 0x1C, 52)
        struct.pack_into(endian + "HH", ehdr, 0x2A, 32, phnum)
        ph = bytearray(32)
        struct.pack_into(endian + "I", ph, 0, 3 if interp else 1)
        struct.pack_into(endian + "I", ph, 4, 52 + 32 * phnum)
        struct.pack_into(endian + "I", ph, 0x10, size)
    return bytes(ehdr) + bytes(ph) * phnum + data


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    for d in ("usr/bin", "usr/lib64", "usr/share", "etc", "var/log", "proc"):
        (r / d).mkdir(parents=True)
    (r / "usr/bin/app").write_bytes(fake_elf("/lib64/ld-fake.so"))
    (r / "usr/bin/app").chmod(0o4755)
    (r / "usr/lib64/ld-fake.so").write_bytes(b"loader")
    (r / "usr/bin/script").write_text("#!/bin/app -x\necho\n")
    (r / "usr/share/target").write_text("t")
    (r / "unrelated").write_text("not needed")
    os.symlink("usr/bin", r / "bin")
    os.symlink("usr/lib64", r / "lib64")
    os.symlink("/usr/share/target", r / "etc/alt")
    os.symlink("../../../../../../etc/hostname", r / "escape")
    os.symlink("/etc/shadow", r / "shadow")
    os.symlink("loop2", r / "loop1")
    os.symlink("loop1", r / "loop2")
    return r


def test_closure_follows_links_inside_the_root_and_adds_interpreters(root) -> None:
    c = closure(str(root), ["/bin/script", "/etc/alt", "/usr/bin/../share/target", "/escape", "/shadow",
                            "/loop1", "/usr/share/target/x", "/proc/self/exe", "/var/log/new.log"])
    assert c.files == {"usr/bin/script", "usr/bin/app", "usr/lib64/ld-fake.so", "usr/share/target"}
    assert c.links == {"bin": "usr/bin", "lib64": "usr/lib64", "etc/alt": "/usr/share/target",
                       "escape": "../../../../../../etc/hostname", "shadow": "/etc/shadow",
                       "loop1": "loop2", "loop2": "loop1"}
    assert {"usr", "usr/bin", "usr/lib64", "usr/share", "etc", "var", "var/log"} <= c.dirs
    assert "proc" not in c.dirs and "unrelated" not in c.files          # the runtime makes /proc
    assert {"/escape", "/shadow", "/var/log/new.log"} <= c.missing      # clamped to the root: not the host's
    assert c.entries() == len(c.files) + len(c.links)


def test_copy_keeps_modes_owners_times_and_links(root, tmp_path) -> None:
    os.chown(root / "usr/bin/app", 1234, 5678)
    os.chmod(root / "usr/bin/app", 0o4755)          # (chown clears setuid)
    os.chmod(root / "usr/share", 0o555)
    os.utime(root / "usr/share/target", ns=(1, 1_000_000_000))
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    c = closure(str(root), ["/bin/script", "/etc/alt", "/fifo", "/null"])
    assert "null" in c.files
    dest = tmp_path / "min"
    copied = copy_closure(str(root), c, str(dest))
    assert copied == sum((root / f).stat().st_size for f in c.files if (root / f).is_file() and f != "fifo")
    st = os.stat(dest / "usr/bin/app")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4755)
    assert stat.S_IMODE(os.stat(dest / "usr/share").st_mode) == 0o555
    assert os.stat(dest / "usr/share/target").st_mtime_ns == 1_000_000_000
    assert os.readlink(dest / "bin") == "usr/bin" and (dest / "etc/alt").is_symlink()
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode) and not os.path.lexists(dest / "null")
    assert not os.path.lexists(dest / "unrelated")
    assert count_files(str(dest)) == 8        # script, app, loader, target, fifo + bin, lib64, etc/alt
    with pytest.raises(errors.AlreadyExists):
        copy_closure(str(root), c, str(dest))
    os.chmod(dest / "usr/share", 0o755)


def test_which_and_first_write(root) -> None:
    assert which(str(root), "app") == "usr/bin/app" == which(str(root), "/bin/app")
    assert which(str(root), "nope") is None and which(str(root), "loop1") is None
    before = (root / "usr/share/target").read_bytes()
    first, again, size = first_write(str(root), "usr/share/target")
    assert first > 0 and again > 0 and size == 1 and (root / "usr/share/target").read_bytes() == before
    with pytest.raises(OSError):
        first_write(str(root), "etc/alt")     # never through a symlink


def test_elf_interpreters_and_shebangs(tmp_path) -> None:
    def interp(data: bytes) -> str | None:
        p = tmp_path / "f"
        p.write_bytes(data)
        fd = os.open(p, os.O_RDONLY)
        try:
            return elf_interpreter(fd) if data[:1] == b"\x7f" else shebang_interpreter(fd)
        finally:
            os.close(fd)
    assert interp(fake_elf("/lib/ld.so")) == "/lib/ld.so"
    assert interp(fake_elf("/lib/ld.so", bits=32, endian=">")) == "/lib/ld.so"
    assert interp(fake_elf(None)) is None                                  # static
    assert interp(fake_elf("/lib/ld.so", filesz=1 << 30)) is None          # a size never trusted
    assert interp(fake_elf("/lib/ld.so", phnum=0)) is None
    assert interp(fake_elf("relative")) is None
    assert interp(fake_elf("/lib/ld.so")[:40]) is None                     # truncated
    assert interp(b"#!/usr/bin/env python3\n") == "/usr/bin/env"
    assert interp(b"#!relative\n") is None and interp(b"#!\n") is None
    fd = os.open("/bin/ls", os.O_RDONLY)
    try:
        assert elf_interpreter(fd) == "/lib64/ld-linux-x86-64.so.2"
    finally:
        os.close(fd)


def test_closure_of_a_real_program_on_the_host() -> None:
    c = closure("/", ["/bin/ls"])
    assert "usr/bin/ls" in c.files and c.links.get("bin") == "usr/bin"
    assert any(f.endswith("ld-linux-x86-64.so.2") for f in c.files)        # the loader the kernel maps


# ---- the package cache -----------------------------------------------------------------------------------------------
def test_cache_refuses_a_directory_others_can_write(tmp_path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    os.chmod(open_dir, 0o777)
    with pytest.raises(errors.FailedPrecondition, match="only root"):
        PackageCache(str(open_dir))
    os.symlink(tmp_path, tmp_path / "link")
    with pytest.raises(errors.FailedPrecondition):
        PackageCache(str(tmp_path / "link"))


def test_cache_is_offline_once_ready(tmp_path, monkeypatch) -> None:
    cache = PackageCache(str(tmp_path / "c"))
    with pytest.raises(errors.InvalidArgument):
        cache.ensure(["ok", "not ok"])
    os.makedirs(cache.debs)
    (tmp_path / "c/debs/Packages").write_text("")
    (tmp_path / "c/debs/requested").write_text("hello\nstrace\n../x\n")
    assert cache.requested() == {"hello", "strace"} and cache.ready(["hello"])

    def no_network(*a, **k):
        raise AssertionError("the network was used")
    monkeypatch.setattr(cache, "_fetch", no_network)
    assert cache.ensure(["hello", "strace"]) is False
    with pytest.raises(AssertionError):
        cache.ensure(["python3"])
    assert cache.bind == f"{cache.debs}:{minimal.REPO_MOUNT}:ro"


def test_cache_index_is_a_flat_repository(tmp_path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text("Package: tiny\nVersion: 1.0\nArchitecture: all\n"
                                        "Maintainer: labkit <labkit@localhost>\nDescription: a test\n")
    cache = PackageCache(str(tmp_path / "c"))
    os.makedirs(cache.debs)
    deb = os.path.join(cache.debs, "tiny_1.0_all.deb")
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), deb], check=True, capture_output=True)
    cache._index()
    text = open(os.path.join(cache.debs, "Packages")).read()
    assert "Package: tiny" in text and "Filename: ./tiny_1.0_all.deb" in text
    assert f"SHA256: {hashlib.sha256(open(deb, 'rb').read()).hexdigest()}" in text
    assert open(os.path.join(cache.debs, "labkit.list")).read() == "deb [trusted=yes] file:/mnt ./\n"
    assert stat.S_IMODE(os.stat(os.path.join(cache.debs, "Packages")).st_mode) == 0o644


def test_default_cache_follows_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("LABKIT_CACHE", "/srv/labkit-cache")
    assert minimal.default_cache() == "/srv/labkit-cache"
    monkeypatch.delenv("LABKIT_CACHE")
    assert minimal.default_cache() == "/var/cache/labkit"
