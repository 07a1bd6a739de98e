"""A minimal image versus a whole base OS: the pieces that build the three images of one application.

A container runs one application, not "an OS", so its filesystem would ideally hold only what that
application needs. There are three ways to an image of a Debian-packaged application:

``figure2``
    the column's figure 2: a Debian base image, ``apt-get install`` in a container, commit. Practical,
    but the image carries the whole base OS (a shell, apt, dpkg's database, coreutils, perl-base...).
``packages``
    the "special technique": the package manager run from *outside* into an empty directory
    (``mmdebstrap --variant=extract --include=PKG``): the package and every package it depends on,
    unpacked, without a base and without running maintainer scripts (no users are created, no
    ``/etc/passwd``, no ``ld.so.cache``).
``minimal``
    only the files the application touches: its command is traced (``strace -f``) in a throw-away
    container of the figure-2 image; the paths it opened, stat'ed or executed, the symlinks and
    directories on the way to them and the ELF interpreters and ``#!`` interpreters of what it ran
    (the kernel loads those itself: no ``open`` shows them) are copied into an empty directory.

What an application needs is discovered, never listed per application: an :class:`App` is a Debian
package, a command and the text its output must contain.

Everything comes from a cache (:class:`PackageCache`, default ``$LABKIT_CACHE`` or
``/var/cache/labkit``): the Debian minbase tarball that ``mmdebstrap`` builds
(:func:`labkit.images.sources.debian_tarball`) and a local flat apt repository holding the dependency
closure of the applications (and of ``strace``), downloaded once from the host's mirror with the host's
apt (signatures checked there) into a private apt state. Containers see the repository read-only at
:data:`REPO_MOUNT` as ``deb [trusted=yes] file:/mnt ./`` with ``--network none``; ``mmdebstrap`` reads
it as ``copy://``. After the first fetch nothing touches the network.

Host-side code treats a root filesystem as hostile: paths are resolved component by component through
directory fds (``O_NOFOLLOW``; a symlink's target is followed inside the root, ``..`` never climbs
above it), files are opened with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``, a trace is read
up to :data:`MAX_TRACE` bytes.

>>> APPS["hello"].command
('hello',)
>>> sorted(parse_trace('7 openat(AT_FDCWD<\\\\x2f>, "\\\\x2f\\\\x65\\\\x74\\\\x63", O_RDONLY) = '
...                    '3<\\\\x2f\\\\x65\\\\x74\\\\x63>'))
['/etc']
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence

from .. import errors
from .._sys.openat2 import RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, openat2
from .sources import debian_mirror, debian_tarball

__all__ = ["App", "APPS", "WAYS", "REPO_MOUNT", "TRACE_MOUNT", "TRACE_FILE", "MAX_TRACE", "default_cache",
           "PackageCache", "install_command", "trace_command", "packages_rootfs", "parse_trace", "Closure",
           "closure", "copy_closure", "count_files", "elf_interpreter", "shebang_interpreter", "which", "first_write",
           "SEARCH_PATH"]

#: the three ways to an application image, in the order the lesson tells them
WAYS = ("figure2", "packages", "minimal")
#: where containers see the local apt repository (an empty directory in Debian's base: nothing is left
#: behind in the committed image)
REPO_MOUNT = "/mnt"
#: where the tracing container writes its trace (a host directory of ours)
TRACE_MOUNT = "/run/labkit-trace"
TRACE_FILE = "trace"
#: a trace longer than this is refused (python3's start-up is ~100 KiB)
MAX_TRACE = 64 << 20
#: paths the runtime provides in every container: never copied from an image
RUNTIME_PATHS = ("/proc", "/sys", "/dev", REPO_MOUNT, TRACE_MOUNT)
_PKG_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_APT_TIMEOUT = 900


@dataclasses.dataclass(frozen=True)
class App:
    """An application as Debian ships it: ``package`` to install, ``command`` to run (an argv list, run
    in the image with no network) and ``expect``, text its output must contain when it works.

    >>> app = App("hello", "hello", ("hello",), "Hello, world!")
    >>> app.check(0, "Hello, world!\\n"), app.check(127, "")
    (True, False)
    """

    name: str
    package: str
    command: tuple[str, ...]
    expect: str

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise errors.InvalidArgument(f"application name {self.name!r}", "is not allowed",
                                         fix="use lowercase letters, digits and _ . - (at most 64)")
        if not _PKG_RE.fullmatch(self.package):
            raise errors.InvalidArgument(f"Debian package name {self.package!r}", "is not a package name",
                                         fix="give a name like hello, python3 or nginx")
        if isinstance(self.command, str) or not self.command or not all(isinstance(a, str) and a for a in self.command):
            raise errors.InvalidArgument(f"command {self.command!r} of {self.name}", "must be a non-empty argv list",
                                         fix='e.g. ("python3", "-c", "print(4)")')
        if not self.expect:
            raise errors.InvalidArgument(f"check of {self.name}", "expects nothing",
                                         fix="give text the output must contain")

    def check(self, exit_code: int | None, output: str) -> bool:
        """The application's own check: it exited 0 and said what it should."""
        return exit_code == 0 and self.expect in output


_HTTPD = ("busybox mkdir -p /srv/www; echo served by busybox httpd > /srv/www/index.html; "
          "busybox httpd -f -p 127.0.0.1:8080 -h /srv/www & "
          "for i in 1 2 3 4 5 6 7 8 9 10; do "
          "busybox wget -q -O - http://127.0.0.1:8080/ && break; busybox sleep 0.2; done; "
          "kill $!")

#: applications that exist as Debian packages and whose check works offline
APPS: dict[str, App] = {a.name: a for a in (
    App("hello", "hello", ("hello",), "Hello, world!"),
    App("python3", "python3", ("python3", "-c", "import json; print(json.dumps({'sum': 2 + 2}))"), '{"sum": 4}'),
    App("nginx", "nginx", ("nginx", "-t"), "test is successful"),
    App("busybox-httpd", "busybox", ("busybox", "sh", "-c", _HTTPD), "served by busybox httpd"),
)}


def default_cache() -> str:
    """Where the Debian tarball and the local package repository are kept: ``$LABKIT_CACHE`` or
    ``/var/cache/labkit`` (shared by every store, so that only the first run uses the network).

    >>> os.environ["LABKIT_CACHE"] = "/srv/c"; default_cache()
    '/srv/c'
    >>> del os.environ["LABKIT_CACHE"]; default_cache()
    '/var/cache/labkit'
    """
    return os.path.abspath(os.environ.get("LABKIT_CACHE") or "/var/cache/labkit")


def _private_dir(path: str) -> str:
    """``path`` as a directory owned by root and writable by nobody else (created 0755 if missing);
    the repository in it is trusted by apt inside containers, so a planted package must be impossible."""
    os.makedirs(path, mode=0o755, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise errors.FailedPrecondition(f"package cache {path!r}", "is not a directory that only root can write",
                                        fix=f"remove it or `chown root: {path} && chmod go-w {path}`")
    return path


class PackageCache:
    """The Debian minbase tarball and a local flat apt repository of the packages the lessons need.

    ``ensure(["python3"])`` downloads the dependency closure of ``python3`` (with an empty dpkg status:
    every package it needs, the essential ones included) from the host's Debian mirror with the host's
    apt — ``apt-get update`` and ``install --download-only`` in a private state under ``<root>/apt`` —
    into ``<root>/debs`` and writes its ``Packages`` index. Packages requested before are not fetched
    again: later calls are offline. One process at a time (an flock on ``<root>/.lock``).

    >>> cache = PackageCache("/var/cache/labkit")      # doctest: +SKIP
    >>> cache.ensure(["hello"]); os.path.exists(cache.debs + "/Packages")     # doctest: +SKIP
    True
    """

    def __init__(self, root: str | None = None, *, suite: str = "bookworm") -> None:
        self.root = _private_dir(os.path.abspath(root or default_cache()))
        self.suite = suite
        self.debs = os.path.join(self.root, "debs")
        self.apt = os.path.join(self.root, "apt")

    def __repr__(self) -> str:
        return f"<PackageCache {self.root}>"

    # ---- the base ---------------------------------------------------------------------------------------
    def debian_tarball(self) -> str:
        """The cached ``debian-<suite>-minbase.tar`` (mmdebstrap from the host's mirror the first time)."""
        with self._locked():
            return debian_tarball(self.root, suite=self.suite)

    # ---- the repository -----------------------------------------------------------------------------------
    def requested(self) -> set[str]:
        """Top-level packages fetched so far (their closures are in the repository)."""
        try:
            with open(os.path.join(self.debs, "requested")) as f:
                return {w for w in f.read().split() if _PKG_RE.fullmatch(w)}
        except FileNotFoundError:
            return set()

    def ready(self, packages: Iterable[str]) -> bool:
        """True when every package's closure is already here (no network needed)."""
        return set(packages) <= self.requested() and os.path.exists(os.path.join(self.debs, "Packages"))

    def ensure(self, packages: Iterable[str]) -> bool:
        """Make the closure of ``packages`` available offline; True if the network was used."""
        wanted = set(packages)
        for p in wanted:
            if not _PKG_RE.fullmatch(p):
                raise errors.InvalidArgument(f"Debian package name {p!r}", "is not a package name")
        with self._locked():
            if self.ready(wanted):
                return False
            _private_dir(self.debs)
            everything = sorted(self.requested() | wanted)
            self._fetch(everything)
            self._index()
            _write_atomic(os.path.join(self.debs, "requested"), "".join(p + "\n" for p in everything))
            return True

    def _apt_options(self) -> list[str]:
        a = self.apt
        return ["-o", f"Dir::Etc::SourceList={a}/sources.list", "-o", f"Dir::Etc::SourceParts={a}/sources.list.d",
                "-o", f"Dir::State={a}/state", "-o", f"Dir::State::status={a}/status",
                "-o", f"Dir::Cache={a}/cache", "-o", f"Dir::Cache::archives={self.debs}/",
                "-o", "Debug::NoLocking=1", "-o", "APT::Install-Recommends=0"]

    def _fetch(self, packages: list[str]) -> None:
        apt_get = shutil.which("apt-get")
        if not apt_get:
            raise errors.Unsupported("the package cache", "needs apt-get", fix="run it on Debian")
        for d in ("state/lists/partial", "cache", "sources.list.d"):
            os.makedirs(os.path.join(self.apt, d), exist_ok=True)
        os.makedirs(os.path.join(self.debs, "partial"), exist_ok=True)
        mirror = debian_mirror()
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        signed = f"[signed-by={keyring}] " if os.path.exists(keyring) else ""
        _write_atomic(os.path.join(self.apt, "sources.list"), f"deb {signed}{mirror} {self.suite} main\n")
        _write_atomic(os.path.join(self.apt, "status"), "")   # nothing installed: the whole closure is fetched
        opts = self._apt_options()
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
        for args, what in ((["update"], f"apt-get update from {mirror}"),
                           (["install", "--download-only", "-y", *packages],
                            f"apt-get download of {' '.join(packages)}")):
            res = subprocess.run([apt_get, "-q", *opts, *args], capture_output=True, text=True, env=env,
                                 timeout=_APT_TIMEOUT)
            if res.returncode:
                tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
                raise errors.FailedPrecondition(
                    what, f"failed: {tail}",
                    fix="check the package names and that the mirror is reachable (apt-get update)")

    def _index(self) -> None:
        """``Packages`` of a flat repository: each .deb's control fields plus Filename, Size, SHA256."""
        stanzas = []
        for name in sorted(os.listdir(self.debs)):
            path = os.path.join(self.debs, name)
            if not name.endswith(".deb") or not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            res = subprocess.run(["dpkg-deb", "--field", path], capture_output=True, text=True, timeout=60)
            if res.returncode:
                raise errors.FailedPrecondition(f"package {path}", f"is unreadable: {res.stderr.strip()[:200]}",
                                                fix=f"delete it and run again: rm {path}")
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            control = res.stdout.rstrip("\n")
            stanzas.append(f"{control}\nFilename: ./{name}\nSize: {os.path.getsize(path)}\nSHA256: {h.hexdigest()}\n")
        _write_atomic(os.path.join(self.debs, "Packages"), "\n".join(stanzas))
        _write_atomic(os.path.join(self.debs, "labkit.list"), f"deb [trusted=yes] file:{REPO_MOUNT} ./\n")

    def _locked(self) -> _Flock:
        return _Flock(os.path.join(self.root, ".lock"))

    @property
    def bind(self) -> str:
        """The read-only bind of the repository for :meth:`labkit.Lab.run`'s ``binds``."""
        return f"{self.debs}:{REPO_MOUNT}:ro"


class _Flock:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> _Flock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _write_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _apt_script(packages: Sequence[str]) -> str:
    """``apt-get update`` + ``install`` from the repository at :data:`REPO_MOUNT`, then the usual clean-up
    of a Dockerfile (no package lists and no downloaded .debs left in the image)."""
    for p in packages:
        if not _PKG_RE.fullmatch(p):
            raise errors.InvalidArgument(f"Debian package name {p!r}", "is not a package name")
    o = f"-o Dir::Etc::SourceList={REPO_MOUNT}/labkit.list -o Dir::Etc::SourceParts=/nonexistent"
    return (f"apt-get {o} -qq update && apt-get {o} -y -qq --no-install-recommends install {' '.join(packages)}"
            " >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*")


def install_command(packages: Sequence[str]) -> list[str]:
    """The figure-2 step for :meth:`labkit.Lab.run` (with ``binds=[cache.bind]``, no network).

    >>> install_command(["hello"])[:2]
    ['sh', '-c']
    """
    return ["sh", "-c", _apt_script(packages)]


def trace_command(app: App) -> list[str]:
    """Install ``strace`` in a throw-away container of the figure-2 image and run the application under
    it: ``-f`` follows children, ``-xx`` prints every string in hex (a hostile name cannot break the
    parser), ``-y`` prints the path behind each fd. The trace goes to :data:`TRACE_MOUNT`; the
    container's output is the application's. Exit 97 means strace could not be installed."""
    script = (_apt_script(["strace"]) + " || exit 97; "
              f"exec strace -f -qq -s 65535 -xx -y -o {TRACE_MOUNT}/{TRACE_FILE} "
              "-e trace=%file,%process,fchdir -- \"$@\"")
    return ["sh", "-c", script, "sh", *app.command]


def packages_rootfs(cache: PackageCache, package: str, dest: str, *, timeout: float = 900) -> None:
    """The "special technique": ``mmdebstrap --variant=extract --include=PACKAGE`` from the local
    repository into the new directory ``dest``: the package and its dependency closure unpacked into an
    empty root, no maintainer script run (in bookworm, ``--variant=custom --mode=chrootless`` fails in
    libc6's preinst: most packages cannot yet be *installed* from outside). ``cache.ensure([package])``
    must have been called."""
    if not _PKG_RE.fullmatch(package):
        raise errors.InvalidArgument(f"Debian package name {package!r}", "is not a package name")
    tool = shutil.which("mmdebstrap")
    if not tool:
        raise errors.Unsupported("the packages-only image", "needs mmdebstrap", fix="apt-get install mmdebstrap")
    if os.path.lexists(dest):
        raise errors.AlreadyExists(f"directory {dest!r}", fix="give a path that does not exist yet")
    res = subprocess.run([tool, "--quiet", "--variant=extract", f"--include={package}", "--mode=root",
                          "--format=directory", cache.suite, dest, f"deb [trusted=yes] copy://{cache.debs} ./"],
                         capture_output=True, text=True, timeout=timeout)
    if res.returncode:
        tail = " | ".join(res.stderr.strip().splitlines()[-3:])
        raise errors.FailedPrecondition(f"mmdebstrap --variant=extract --include={package}", f"failed: {tail}",
                                        fix=f"is {package} in the cache? PackageCache.ensure([{package!r}])")


# ---- the trace ------------------------------------------------------------------------------------------------
_STR = re.compile(rb'"((?:\\x[0-9a-f]{2})*)"')
_DECOR = re.compile(rb'(\d+|AT_FDCWD)<((?:\\x[0-9a-f]{2})*)>')
_RETURN = re.compile(rb'\)\s+=\s+(-?\d+)(?:<((?:\\x[0-9a-f]{2})*)>)?')
_RESUMED = re.compile(rb'<\.\.\. ([A-Za-z0-9_]+) resumed>(.*)')
_UNFINISHED = b"<unfinished ...>"
_FORKS = (b"clone", b"clone3", b"fork", b"vfork")


def _hex(b: bytes) -> str:
    return os.fsdecode(bytes.fromhex(b.replace(b"\\x", b"").decode()))


def _args_outside_brackets(args: bytes) -> list[tuple[int, bytes]]:
    """Top-level quoted strings of a syscall's arguments (not those in an argv ``[...]`` or a struct
    ``{...}``), each with its offset."""
    out, depth = [], 0
    i = 0
    while i < len(args):
        c = args[i:i + 1]
        if c in (b"[", b"{"):
            depth += 1
        elif c in (b"]", b"}"):
            depth = max(0, depth - 1)
        elif c == b'"':
            m = _STR.match(args, i)
            if not m:
                break
            if depth == 0:
                out.append((i, m.group(1)))
            i = m.end()
            continue
        i += 1
    return out


def _trace_calls(raw: bytes) -> Iterable[tuple[bytes, bytes, bytes]]:
    """(pid, syscall name, arguments and result) per call, an interrupted call's two halves joined."""
    pending: dict[bytes, bytes] = {}
    for line in raw.splitlines():
        pid, _, rest = line.strip().partition(b" ")
        rest = rest.strip()
        if not pid.isdigit() or not rest or rest.startswith((b"+++", b"---")):
            continue
        if rest.endswith(_UNFINISHED):
            pending[pid] = rest[:-len(_UNFINISHED)].rstrip()
            continue
        m = _RESUMED.match(rest)
        if m:
            head = pending.pop(pid, None)
            rest = head + m.group(2) if head is not None else m.group(1) + b"(" + m.group(2)
        name, paren, args = rest.partition(b"(")
        if paren and name.replace(b"_", b"").isalnum():
            yield pid, name, args


def parse_trace(text: str | bytes) -> set[str]:
    """The absolute paths a ``strace -f -xx -y -e trace=%file,%process,fchdir`` log names: path
    arguments, and what successful opens returned (``-y``). A relative path is joined to the directory
    its dirfd stands for, else to the process's working directory, followed through ``chdir``,
    ``fchdir``, the ``AT_FDCWD<cwd>`` that ``-y`` prints, and inherited by the children ``clone``,
    ``fork`` and ``vfork`` make. An interrupted call (``<unfinished ...>`` / ``<... resumed>``) is read
    whole; exit and signal lines and anything unparsable are skipped.

    >>> sorted(parse_trace(b'1 execve("\\\\x2f\\\\x62", ["\\\\x2f\\\\x78"], 0x1 /* 2 vars */) = 0'))
    ['/b']
    """
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    paths: set[str] = set()
    cwd: dict[bytes, str] = {}
    for pid, name, args in _trace_calls(raw):
        here = cwd.get(pid, "/")
        for m in _DECOR.finditer(args):
            if m.group(1) == b"AT_FDCWD" and m.group(2):
                here = cwd[pid] = _hex(m.group(2))
        ret = _RETURN.search(args)
        code = int(ret.group(1)) if ret else None
        strings = []
        for pos, s in _args_outside_brackets(args[:ret.start()] if ret else args):
            if not s:
                continue                   # "" with AT_EMPTY_PATH: the fd's own path, already known
            p = _hex(s)
            if not p.startswith("/"):
                base = here
                before = args[:pos].rstrip().rstrip(b",").rstrip()
                decors = list(_DECOR.finditer(before))
                last = decors[-1] if decors else None
                if last is not None and last.end() == len(before) and last.group(2):
                    base = _hex(last.group(2))
                p = os.path.join(base, p)
            strings.append(p)
            paths.add(p)
        if ret and ret.group(2):
            paths.add(_hex(ret.group(2)))
        if code is None or code < 0:
            continue
        if name in _FORKS and code > 0:
            cwd[str(code).encode()] = here
        elif name == b"chdir" and strings:
            cwd[pid] = os.path.normpath(strings[0])
        elif name == b"fchdir":
            fd_path = _DECOR.search(args)
            if fd_path and fd_path.group(2):
                cwd[pid] = _hex(fd_path.group(2))
    return {"/" + os.path.normpath(p).lstrip("/") for p in paths
            if p.startswith("/") and "\0" not in p and not p.endswith(" (deleted)")}


# ---- resolving inside a root ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Closure:
    """What a set of paths needs inside a root: canonical directories, symlinks (with targets) and
    other entries (files), all relative to the root without a leading slash; ``missing`` are the asked
    paths that do not exist (their existing ancestors are in ``dirs``)."""

    dirs: set[str] = dataclasses.field(default_factory=set)
    links: dict[str, str] = dataclasses.field(default_factory=dict)
    files: set[str] = dataclasses.field(default_factory=set)
    missing: set[str] = dataclasses.field(default_factory=set)

    def entries(self) -> int:
        """Number of non-directory entries (files and symlinks)."""
        return len(self.files) + len(self.links)


def _open_beneath(root_fd: int, rel: str, flags: int) -> int:
    return openat2(root_fd, rel or ".", flags, resolve=_RESOLVE)


def _runtime_path(p: str) -> bool:
    return any(p == r or p.startswith(r + "/") for r in RUNTIME_PATHS)


def _walk(root_fd: int, path: str, out: Closure, *, max_links: int = 40) -> str | None:
    """Resolve ``path`` inside the root as the kernel would with that root as ``/``, recording every
    directory and symlink on the way; returns the canonical relative path of what it names (None if
    something on the way does not exist, is not a directory, or loops)."""
    todo = [c for c in path.split("/") if c]
    cur: list[str] = []
    hops = 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            if cur:
                cur.pop()
            continue
        rel = "/".join(cur + [name])
        parent = "/".join(cur)
        try:
            fd = _open_beneath(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
        except OSError:
            out.missing.add("/" + path.lstrip("/"))
            return None
        finally:
            os.close(fd)
        if target is not None:
            hops += 1
            if hops > max_links:
                return None
            out.links[rel] = target
            if target.startswith("/"):
                cur = []
            todo = [c for c in target.split("/") if c] + todo
            continue
        if stat.S_ISDIR(st.st_mode):
            out.dirs.add(rel)
            cur.append(name)
            continue
        if todo:
            return None                      # a file used as a directory: ENOTDIR
        out.files.add(rel)
        return rel
    return "/".join(cur)


def elf_interpreter(fd: int) -> str | None:
    """The ``PT_INTERP`` path of an ELF file open at ``fd`` (the dynamic loader the kernel maps before
    the program runs), or None (not ELF, static, or malformed). Bounded reads; never trusts a size.

    >>> fd = os.open("/bin/ls", os.O_RDONLY); elf_interpreter(fd).startswith("/lib"); os.close(fd)
    True
    """
    head = os.pread(fd, 64, 0)
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    end = "<" if head[5] == 1 else ">"
    if head[4] == 2:
        if len(head) < 64:
            return None
        phoff, = struct.unpack_from(end + "Q", head, 0x20)
        phentsize, phnum = struct.unpack_from(end + "HH", head, 0x36)
        need, off_fmt, off_at, size_at = 0x38, "Q", 0x08, 0x20
    else:
        phoff, = struct.unpack_from(end + "I", head, 0x1C)
        phentsize, phnum = struct.unpack_from(end + "HH", head, 0x2A)
        need, off_fmt, off_at, size_at = 0x20, "I", 0x04, 0x10
    if phentsize < need or phnum > 512:
        return None
    table = os.pread(fd, phentsize * phnum, phoff)
    for i in range(len(table) // phentsize):
        ph = table[i * phentsize:(i + 1) * phentsize]
        if struct.unpack_from(end + "I", ph, 0)[0] != 3:       # PT_INTERP
            continue
        offset, = struct.unpack_from(end + off_fmt, ph, off_at)
        size, = struct.unpack_from(end + off_fmt, ph, size_at)
        if not 1 < size <= 4096:
            return None
        raw = os.pread(fd, size, offset).split(b"\0")[0]
        return os.fsdecode(raw) if raw.startswith(b"/") else None
    return None


def shebang_interpreter(fd: int) -> str | None:
    """The interpreter of a ``#!`` script open at ``fd`` (its first word), or None.

    >>> import tempfile
    >>> with tempfile.TemporaryFile() as f:
    ...     _ = f.write(b"#! /usr/bin/env python3\\n"); f.flush()
    ...     shebang_interpreter(f.fileno())
    '/usr/bin/env'
    """
    head = os.pread(fd, 256, 0)
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n")[0].split()
    return os.fsdecode(words[0]) if words and words[0].startswith(b"/") else None


def closure(root: str, paths: Iterable[str]) -> Closure:
    """Everything under ``root`` that ``paths`` need: each path resolved inside the root (symlinks and
    directories on the way kept), plus, repeatedly, the ELF interpreter and ``#!`` interpreter of every
    file found. Paths the runtime provides (``/proc``, ``/sys``, ``/dev``, the lessons' bind mounts)
    are left out.

    >>> c = closure("/", ["/bin/ls"]); "usr/bin/ls" in c.files and "bin" in c.links
    True
    """
    out = Closure()
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        todo = sorted(p for p in paths if not _runtime_path(os.path.normpath("/" + p.lstrip("/"))))
        seen: set[str] = set()
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            found = _walk(root_fd, p, out)
            if found is None or found not in out.files:
                continue
            st = _lstat(root_fd, found)
            if st is None or not stat.S_ISREG(st.st_mode):
                continue                   # never open a device node or a FIFO of an image
            try:
                fd = _open_beneath(root_fd, found, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                for interp in (elf_interpreter(fd), shebang_interpreter(fd)):
                    if interp and interp not in seen:
                        todo.append(interp)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
    out.dirs.discard("")
    return out


def copy_closure(root: str, what: Closure, dest: str) -> int:
    """Copy what ``what`` names from ``root`` into the new directory ``dest``: directories and files
    with their modes (setuid included), owners and times, symlinks as they are; sockets and device nodes
    are skipped (the runtime makes ``/dev``). Returns the bytes of file content copied.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     copy_closure("/", closure("/", ["/bin/ls"]), d + "/m") > 0 and os.path.islink(d + "/m/bin")
    True
    """
    if os.path.lexists(dest):
        raise errors.AlreadyExists(f"directory {dest!r}", fix="give a path that does not exist yet")
    os.mkdir(dest, 0o755)
    total = 0
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    dest_fd = os.open(dest, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for rel in sorted(what.dirs, key=lambda r: (r.count("/"), r)):
            os.mkdir(rel, 0o700, dir_fd=dest_fd)
        for rel, target in sorted(what.links.items()):
            os.symlink(target, rel, dir_fd=dest_fd)
            st = _lstat(root_fd, rel)
            if st is not None:
                os.chown(rel, st.st_uid, st.st_gid, dir_fd=dest_fd, follow_symlinks=False)
        for rel in sorted(what.files):
            total += _copy_file(root_fd, dest_fd, rel)
        for rel in sorted(what.dirs, key=lambda r: -r.count("/")):      # modes last: a 0555 dir is filled first
            src = _open_beneath(root_fd, rel, os.O_PATH | os.O_DIRECTORY)
            try:
                st = os.fstat(src)
            finally:
                os.close(src)
            dfd = _open_beneath(dest_fd, rel, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fchown(dfd, st.st_uid, st.st_gid)
                os.fchmod(dfd, stat.S_IMODE(st.st_mode))
                os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dfd)
    finally:
        os.close(root_fd)
        os.close(dest_fd)
    return total


def _lstat(root_fd: int, rel: str) -> os.stat_result | None:
    """lstat of ``rel`` (canonical: no symlink on the way) inside the root, None if it is gone."""
    parent, _, name = rel.rpartition("/")
    try:
        pfd = _open_beneath(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        return os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(pfd)


def _copy_file(root_fd: int, dest_fd: int, rel: str) -> int:
    st = _lstat(root_fd, rel)
    if st is None:
        return 0
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISFIFO(st.st_mode):
            os.mkfifo(rel, stat.S_IMODE(st.st_mode), dir_fd=dest_fd)
        return 0
    src = _open_beneath(root_fd, rel, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dst = os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dest_fd)
        try:
            copied = 0
            while True:
                try:
                    n = os.copy_file_range(src, dst, 1 << 24)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    n = os.write(dst, os.read(src, 1 << 20))
                if n == 0:
                    break
                copied += n
            os.fchown(dst, st.st_uid, st.st_gid)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return copied


#: where a container looks for a bare command name (the runtime's default PATH)
SEARCH_PATH = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")


def which(root: str, command: str) -> str | None:
    """The canonical path (relative to ``root``) of the regular file ``command`` runs as inside the root:
    an absolute command is resolved as it is, a bare name through :data:`SEARCH_PATH`. None if absent.

    >>> which("/", "ls")
    'usr/bin/ls'
    """
    candidates = [command] if "/" in command else [f"/{d}/{command}" for d in SEARCH_PATH]
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for cand in candidates:
            found = _walk(root_fd, cand, Closure())
            st = _lstat(root_fd, found) if found else None
            if st is not None and stat.S_ISREG(st.st_mode):
                return found
    finally:
        os.close(root_fd)
    return None


def first_write(root: str, rel: str) -> tuple[float, float, int]:
    """Rewrite one byte in the middle of the file ``rel`` of a container's root filesystem with the value
    it already has, twice, each time open + ``pwrite`` + ``fsync``: ``(first, again, file_bytes)`` in
    seconds. The first write breaks the sharing with the image (overlay copies the whole file up, a thin
    device copies one block), the second finds the data already private. The content never changes.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = open(d + "/f", "wb").write(b"x" * 10)
    ...     first_write(d, "f")[2]
    10
    """
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        times = []
        size = 0
        for _ in range(2):
            t0 = time.perf_counter()
            fd = _open_beneath(root_fd, rel, os.O_RDWR | os.O_NOFOLLOW)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise errors.InvalidArgument(f"{rel} in {root}", "is not a regular file")
                size = st.st_size
                at = size // 2
                byte = os.pread(fd, 1, at) or b"\0"
                os.pwrite(fd, byte, at)
                os.fsync(fd)
            finally:
                os.close(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(root_fd)
    return times[0], times[1], size


def count_files(root: str) -> int:
    """Non-directory entries (files, symlinks, ...) under ``root``, staying on its filesystem and never
    following a symlink.

    >>> count_files("/nonexistent")
    0
    """
    try:
        dev = os.lstat(root).st_dev
    except OSError:
        return 0
    n, stack = 0, [root]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    if e.stat(follow_symlinks=False).st_dev == dev:
                        stack.append(e.path)
                else:
                    n += 1
    return n
