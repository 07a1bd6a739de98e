"""Paths the image store touches, checked; files it writes for the user, written atomically.

* :func:`confined` resolves a path (symlinks included) and refuses it unless it lies inside the store
  root — every directory the store creates, mounts on or removes goes through it first, so a planted
  symlink or a ``..`` in a name can never send a ``rmtree`` or a mount outside the store.
* :func:`atomic_output` writes a user's file through a temporary file made with ``mkstemp`` (``O_CREAT |
  O_EXCL | O_NOFOLLOW``, mode 0600) in the destination directory, fsyncs it, and ``rename``\\ s it over the
  destination: a reader sees the old file or the whole new one, and a symlink at the destination is
  replaced, never followed.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> os.symlink("/etc/passwd", d + "/out")
>>> with atomic_output(d + "/out") as f:
...     _ = f.write(b"mine")
>>> os.path.islink(d + "/out"), open(d + "/out", "rb").read()
(False, b'mine')
"""
from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from .. import errors
from .._sys.leftovers import inside

__all__ = ["confined", "atomic_output", "check_output"]


def confined(path: str | os.PathLike[str], root: str) -> str:
    """``path`` resolved (``realpath``), after checking that it is ``root`` or lies below it.

    >>> confined("/var/lib/labkit/images/tmp/x", "/var/lib/labkit/images")      # doctest: +SKIP
    '/var/lib/labkit/images/tmp/x'
    >>> confined("/etc", "/tmp")      # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    labkit.errors.InvalidArgument: path '/etc': resolves to '/etc', outside the image store at '/tmp': ...
    """
    real = os.path.realpath(path)
    if not inside(real, os.path.realpath(root)):
        raise errors.InvalidArgument(f"path {os.fspath(path)!r}", f"resolves to {real!r}, outside the image store "
                                     f"at {root!r}",
                                     fix="labkit only creates, mounts on and removes paths in its store")
    return real


def check_output(dest: str | os.PathLike[str]) -> str:
    """``dest`` as an absolute path, after checking that :func:`atomic_output` can write it: not a
    directory, in a directory that exists (call it before long work, so that a typo fails at once).

    >>> check_output("/nonexistent-dir/x.tar")
    Traceback (most recent call last):
    ...
    labkit.errors.NotFound: directory '/nonexistent-dir' not found: create it first, or write elsewhere
    """
    out = os.path.abspath(os.fspath(dest))
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise errors.InvalidArgument(f"output {out!r}", "is a directory", fix="give a file name")
    if not os.path.isdir(os.path.dirname(out)):
        raise errors.NotFound(f"directory {os.path.dirname(out)!r}", fix="create it first, or write elsewhere")
    return out


@contextmanager
def atomic_output(dest: str | os.PathLike[str], *, mode: int = 0o600) -> Iterator[BinaryIO]:
    """A binary file to write; on success it replaces ``dest`` in one ``rename``, on failure it is gone.

    ``dest`` may not be a directory; its directory must exist. The file gets ``mode`` (0600 by default:
    an image may hold secrets).

    >>> with atomic_output("/tmp/bb.tar") as f:      # doctest: +SKIP
    ...     f.write(data)
    """
    out = check_output(dest)
    folder = os.path.dirname(out)
    fd, tmp = tempfile.mkstemp(prefix=".labkit-", suffix=".part", dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
