"""Where base images come from without a registry: busybox, a host directory, a Debian mirror.

``debian_tarball(cache_dir)`` builds ``mmdebstrap --variant=minbase bookworm`` from the mirror the host's
apt is configured with (``/etc/apt/sources.list*``; labkit never names a host of its own) and caches the
tar, so every later import is offline.

>>> debian_mirror("/nonexistent")     # doctest: +SKIP
'http://deb.debian.org/debian'
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

from .. import errors

__all__ = ["debian_mirror", "debian_tarball", "content_size"]


def debian_mirror(apt_dir: str = "/etc/apt") -> str:
    """The first Debian (not -security) mirror URI configured for apt, deb822 or one-line format.

    >>> isinstance(debian_mirror(), str)        # doctest: +SKIP
    True
    """
    files = sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.sources")))
    for path in files:
        with open(path) as f:
            for stanza in f.read().split("\n\n"):
                fields = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.strip()
                if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    if "security" not in uri and "debian" in uri:
                        return uri
    for path in [os.path.join(apt_dir, "sources.list"),
                 *sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.list")))]:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                words = line.split("#")[0].split()
                if len(words) >= 3 and words[0] == "deb":
                    uri = next((w for w in words[1:] if not w.startswith("[")), "")
                    if "security" not in uri and "debian" in uri:
                        return uri
    raise errors.NotFound(f"a Debian mirror in {apt_dir}/sources.list*",
                          fix="configure apt with a Debian mirror (deb http://.../debian bookworm main)")


def debian_tarball(cache_dir: str, *, suite: str = "bookworm", variant: str = "minbase",
                   mirror: str | None = None, timeout: float = 900) -> str:
    """Path of the cached ``debian-<suite>-<variant>.tar``, building it with mmdebstrap the first time.

    >>> debian_tarball("/var/lib/labkit/images/cache")   # doctest: +SKIP
    '/var/lib/labkit/images/cache/debian-bookworm-minbase.tar'
    """
    os.makedirs(cache_dir, exist_ok=True)
    out = os.path.join(cache_dir, f"debian-{suite}-{variant}.tar")
    if os.path.exists(out):
        return out
    tool = shutil.which("mmdebstrap")
    if not tool:
        raise errors.Unsupported("the debian image", "needs mmdebstrap", fix="apt-get install mmdebstrap")
    mirror = mirror or debian_mirror()
    # mmdebstrap writes into a private directory of ours (mkdtemp: 0700, a fresh name), then one rename
    # puts the whole tarball in place: no half-written cache, and nothing planted at a guessable name
    work = tempfile.mkdtemp(prefix=".tmp-", dir=cache_dir)
    try:
        tmp = os.path.join(work, "out.tar")
        res = subprocess.run([tool, "--quiet", f"--variant={variant}", "--mode=root", "--format=tar",
                              suite, tmp, mirror], capture_output=True, text=True, timeout=timeout)
        if res.returncode:
            tail = " | ".join(res.stderr.strip().splitlines()[-3:])
            raise errors.FailedPrecondition(f"mmdebstrap {suite} from {mirror}", f"failed: {tail}",
                                            fix="check that the mirror is reachable (apt-get update)")
        os.chmod(tmp, 0o600)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def content_size(path: str) -> int:
    """Apparent bytes of an image's content: regular files (hard links once) plus symlink targets.

    >>> content_size("/nonexistent")
    0
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        dev = os.lstat(path).st_dev
    except OSError:
        return 0
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if e.is_dir(follow_symlinks=False):
                    if st.st_dev == dev:
                        stack.append(e.path)
                elif e.is_symlink():
                    total += st.st_size
                elif e.is_file(follow_symlinks=False):
                    key = (st.st_dev, st.st_ino)
                    if key not in seen:
                        seen.add(key)
                        total += st.st_size
    return total
