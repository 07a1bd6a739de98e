"""Open a tar archive that may be anything: the compression is recognised by content, decompressed with
its integrity checks, and every malformation becomes one line naming the archive and what was expected.

The format is read from the first bytes, never from the file name: gzip (``1f 8b``), bzip2 (``BZh``),
xz (``fd 37 7a 58 5a 00``), zstd (``28 b5 2f fd``, through the ``zstd`` tool) or a plain tar (a valid
first header block). A name that says one thing and content that says another is fine when the content
is a tar; when it is not, the error says both. Checks tarfile does not make on its own:

* the gzip, bzip2, xz and zstd integrity checks (CRC, checksums, zstd's exit status): after the tar's
  end the decompressed trailer is read (up to 16 MiB) so that a corrupt stream is noticed;
* a header block that is garbage, or cut short, after the first member (tarfile would end the archive
  there silently) is refused; an archive that ends cleanly at a block boundary without the two zero
  blocks is accepted, as Go's ``archive/tar`` (Docker) accepts it;
* members are not kept in memory (stream mode otherwise keeps every ``TarInfo``).

>>> import io
>>> try:
...     with open_tar(io.BytesIO(b"junk" * 200), name="'junk.tar'") as stream:
...         list(stream)
... except Exception as e:
...     print(type(e).__name__, str(e).splitlines()[0][:40])
InvalidArgument archive 'junk.tar': is not a tar archive
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, BinaryIO, Protocol

from .. import errors

__all__ = ["open_tar", "TarStream", "ArchiveError", "sniff", "check_file", "EXPECTED", "describe", "Readable"]

EXPECTED = "expected a tar archive, plain or compressed with gzip, bzip2, xz or zstd"
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
_BY_SUFFIX = ((".tgz", "gzip"), (".gz", "gzip"), (".tbz2", "bzip2"), (".bz2", "bzip2"), (".txz", "xz"),
              (".xz", "xz"), (".zst", "zstd"), (".tzst", "zstd"), (".tar", "plain"))
_DRAIN = 16 << 20
_BLOCK = tarfile.BLOCKSIZE

# tarfile's header errors, which its stream mode raises to end the member list: undocumented (typeshed
# leaves them out) but in tarfile.py since Python 3.2
_EOFHeaderError: type[tarfile.HeaderError] = tarfile.EOFHeaderError              # type: ignore[attr-defined]
_EmptyHeaderError: type[tarfile.HeaderError] = tarfile.EmptyHeaderError          # type: ignore[attr-defined]
_TruncatedHeaderError: type[tarfile.HeaderError] = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]
_InvalidHeaderError: type[tarfile.HeaderError] = tarfile.InvalidHeaderError      # type: ignore[attr-defined]


class ArchiveError(Exception):
    """Internal: the archive's bytes are malformed (turned into ``InvalidArgument`` naming the archive)."""


def describe(src: str | os.PathLike[str] | Readable) -> str:
    """How an archive is named in messages: its path, quoted (a hostile name stays on one line)."""
    if isinstance(src, (str, os.PathLike)):
        return repr(os.fspath(src))
    return repr(getattr(src, "name", "<stream>"))


def _one_line(s: object) -> str:
    return " ".join(str(s).split())


class Readable(Protocol):
    """What an archive is read from: a binary file, a member of another tar, a decompressor, a wrapper
    that hashes what passes (only ``read`` is used)."""

    def read(self, n: int = -1, /) -> bytes: ...


class _Peek:
    """A forward-only reader that can look at its first bytes and then give them again."""

    def __init__(self, f: Readable) -> None:
        self.f, self.buf = f, b""

    def seekable(self) -> bool:
        """False: the decompressors read it forward only."""
        return False

    def seek(self, n: int, whence: int = 0, /) -> int:
        raise io.UnsupportedOperation("seek")

    def peek(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.f.read(n - len(self.buf))
            if not chunk:
                break
            self.buf += chunk
        return self.buf[:n]

    def read(self, n: int = -1) -> bytes:
        if self.buf:
            if n < 0:
                out, self.buf = self.buf + self.f.read(), b""
                return out
            out, self.buf = self.buf[:n], self.buf[n:]
            return out
        return self.f.read(n)


class _Guard:
    """Turns a decompressor's complaints (truncated stream, bad CRC, bad data) into :class:`ArchiveError`."""

    def __init__(self, f: Readable, fmt: str) -> None:
        self.f, self.fmt = f, fmt

    def read(self, n: int = -1) -> bytes:
        try:
            return self.f.read(n)
        except _SourceError:
            raise
        except EOFError:
            raise ArchiveError(f"its {self.fmt} stream is cut short (truncated file?)") from None
        except (zlib.error, lzma.LZMAError, OSError) as e:
            raise ArchiveError(f"its {self.fmt} stream is corrupt ({_one_line(e)})") from None


class _SourceError(OSError):
    """An I/O error reading the archive file itself (not the archive's fault)."""


class _Source:
    def __init__(self, f: Readable) -> None:
        self.f = f

    def read(self, n: int = -1) -> bytes:
        try:
            return self.f.read(n)
        except _SourceError:
            raise
        except OSError as e:
            raise _SourceError(e.errno, e.strerror or str(e)) from e


class _Zstd:
    """``zstd -dc`` fed from a reader by a thread (so any reader, also a member of another tar, works)."""

    def __init__(self, src: _Peek) -> None:
        tool = shutil.which("zstd")
        if not tool:
            raise errors.Unsupported("a zstd-compressed archive", "needs the zstd tool", fix="apt-get install zstd")
        self.proc = subprocess.Popen([tool, "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.feed_error: BaseException | None = None
        self.thread = threading.Thread(target=self._feed, args=(src,), daemon=True, name="labkit-zstd-feed")
        self.thread.start()

    def _feed(self, src: _Peek) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                stdin.write(chunk)
        except BrokenPipeError:
            pass
        except BaseException as e:  # noqa: BLE001 - reported by read() once the output ends
            self.feed_error = e
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def read(self, n: int = -1) -> bytes:
        assert self.proc.stdout is not None
        data = self.proc.stdout.read(n)
        if not data and n != 0:
            self.thread.join()
            if self.feed_error is not None:
                raise self.feed_error
            rc = self.proc.wait()
            if rc:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise ArchiveError(f"its zstd stream is corrupt ({_one_line(err)[-200:] or f'zstd exit {rc}'})")
        return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        self.thread.join(timeout=5)


def _first_block_is_tar(block: bytes) -> bool:
    if len(block) < _BLOCK:
        return False
    if block == b"\0" * _BLOCK:   # an empty archive (end marker only)
        return True
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def sniff(head: bytes) -> str:
    """The compression the first bytes announce: ``gzip``, ``bzip2``, ``xz``, ``zstd`` or ``plain``.

    >>> sniff(b"\\x1f\\x8b\\x08"), sniff(b"ustar")
    ('gzip', 'plain')
    """
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return "plain"


def _name_says(name: str) -> str | None:
    low = name.lower().rstrip("'\"")
    for suffix, fmt in _BY_SUFFIX:
        if low.endswith(suffix):
            return fmt
    return None


class _Stop(tarfile.TarInfo):
    """Records on the TarFile why the member list ended (tarfile swallows that after the first member)."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> tarfile.TarInfo:   # type: ignore[override]
        try:
            return super().fromtarfile(tf)
        except _EOFHeaderError:
            tf._lk_stop = "end"                       # type: ignore[attr-defined]
            raise
        except _EmptyHeaderError:
            tf._lk_stop = "eof"                       # type: ignore[attr-defined]
            raise
        except _TruncatedHeaderError:
            tf._lk_stop = "a header block cut short (truncated file?)"   # type: ignore[attr-defined]
            raise
        except _InvalidHeaderError as e:
            tf._lk_stop = f"a damaged header block ({_one_line(e)})"     # type: ignore[attr-defined]
            raise


class TarStream:
    """Members of an open archive, one at a time; ``extractfile(member)`` reads a regular member's data.

    Iterating to the end also verifies the end of the archive and the compression's integrity check.
    """

    def __init__(self, tf: tarfile.TarFile, reader: _Guard | _Peek, fmt: str, name: str) -> None:
        self.tf, self.reader, self.format, self.name = tf, reader, fmt, name
        self.members = 0

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        while True:
            m = self.tf.next()
            # stream mode would keep every header in memory (TarFile.members: undocumented, not in typeshed)
            self.tf.members.clear()     # type: ignore[attr-defined]
            if m is None:
                self._finish()
                return
            self.members += 1
            yield m

    def extractfile(self, m: tarfile.TarInfo) -> IO[bytes] | None:
        return self.tf.extractfile(m)

    def _finish(self) -> None:
        stop = getattr(self.tf, "_lk_stop", "end")
        if stop not in ("end", "eof"):
            raise ArchiveError(f"has {stop}")
        if self.format != "plain":      # read the compressed trailer so that its checksum is verified
            left = _DRAIN
            while left > 0:
                chunk = self.reader.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)


@contextmanager
def open_tar(src: str | os.PathLike[str] | Readable, *, name: str | None = None) -> Iterator[TarStream]:
    """A :class:`TarStream` over ``src`` (a path or a binary reader), whatever its compression.

    Every malformation — empty, not a tar, truncated, corrupt compressed data, a directory — is an
    ``InvalidArgument`` naming the archive (``name``, else its path) and what was expected.

    >>> with open_tar("rootfs.tar.xz") as stream:      # doctest: +SKIP
    ...     names = [m.name for m in stream]
    """
    label = name or describe(src)
    own: BinaryIO | None = None
    zstd: _Zstd | None = None
    stream: TarStream | None = None
    try:
        if isinstance(src, (str, os.PathLike)):
            path = os.fspath(src)
            _check_file(path, label)
            own = open(path, "rb")
            raw = _Peek(_Source(own))
        else:
            raw = _Peek(_Source(src))
        head = raw.peek(6)
        if not head:
            raise ArchiveError("is empty")
        fmt = sniff(head)
        if fmt == "gzip":
            dec: Readable = gzip.GzipFile(fileobj=raw, mode="rb")
        elif fmt == "bzip2":
            dec = bz2.BZ2File(raw)
        elif fmt == "xz":
            dec = lzma.LZMAFile(raw)   # type: ignore[arg-type]  # typeshed wants IO[bytes]; it reads, as bz2
        elif fmt == "zstd":
            dec = zstd = _Zstd(raw)
        else:
            dec = raw
        reader = _Peek(_Guard(dec, fmt)) if fmt != "plain" else raw
        first = reader.peek(_BLOCK)
        if not first:
            raise ArchiveError(f"holds nothing: its {fmt} stream decompresses to 0 bytes")
        if len(first) < _BLOCK and fmt == "plain":
            raise ArchiveError(f"is {len(first)} bytes, shorter than one {_BLOCK}-byte tar header (truncated?)")
        if not _first_block_is_tar(first):
            says = _name_says(label)
            found = "neither a tar header nor gzip, bzip2, xz or zstd data" if fmt == "plain" else \
                f"{fmt}-compressed data, but what it holds is not a tar archive"
            if says and says != fmt and says != "plain":
                found += f" (its name says {says})"
            raise ArchiveError(f"is not a tar archive: it starts with {found}")
        try:
            # stream mode only reads; typeshed's fileobj protocol also asks for write, tell and seek
            tf = tarfile.open(fileobj=reader, mode="r|", tarinfo=_Stop)   # type: ignore[call-overload]
        except tarfile.TarError as e:
            raise ArchiveError(f"is not a readable tar archive ({_one_line(e)})") from None
        stream = TarStream(tf, reader, fmt, label)
        try:
            yield stream
        finally:
            tf.close()
    except ArchiveError as e:
        where = f" after {stream.members} members" if stream is not None and stream.members else ""
        raise errors.InvalidArgument(f"archive {label}", f"{e}{where}", fix=EXPECTED) from None
    except tarfile.TarError as e:
        where = f" after {stream.members} members" if stream is not None else ""
        raise errors.InvalidArgument(f"archive {label}", f"is not a readable tar archive ({_one_line(e)}){where}",
                                     fix=EXPECTED) from None
    except _SourceError as e:
        raise OSError(e.errno, f"reading archive {label}: {e.strerror}") from None
    finally:
        if zstd is not None:
            zstd.close()
        if own is not None:
            own.close()


def check_file(path: str | os.PathLike[str], *, name: str | None = None) -> None:
    """Refuse, in one line, a path that is not a non-empty regular file (symlinks followed: the user
    named it): ``NotFound`` when nothing is there, ``InvalidArgument`` for a directory, a device, an
    empty file.

    >>> check_file("/")
    Traceback (most recent call last):
    ...
    labkit.errors.InvalidArgument: archive '/': is a directory: expected a tar archive, plain or compressed
    with gzip, bzip2, xz or zstd
    """
    label = name or describe(path)
    try:
        _check_file(os.fspath(path), label)
    except ArchiveError as e:
        raise errors.InvalidArgument(f"archive {label}", str(e), fix=EXPECTED) from None


def _check_file(path: str, label: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise errors.NotFound(f"archive {label}", fix="give an existing tar file") from None
    if stat.S_ISDIR(st.st_mode):
        raise ArchiveError("is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ArchiveError("is not a regular file")
    if st.st_size == 0:
        raise ArchiveError("is empty")
