"""A minimal root filesystem from the host's busybox-static: no network needed.

It holds the static binary at ``/bin/busybox``, one link per applet (``/bin/sh``, ``/bin/ls``...), an
``/etc/passwd`` and ``/etc/group`` with root and nobody, an ``/etc/hostname``, a sticky ``/tmp``, and
empty mount points for ``/proc``, ``/sys``, ``/dev`` — enough for a container to run shell commands,
``httpd`` and ``wget``.

>>> import tempfile
>>> root = tempfile.mkdtemp()
>>> build_busybox_rootfs(root)            # doctest: +SKIP
>>> os.path.exists(root + "/bin/sh")      # doctest: +SKIP
True
"""
from __future__ import annotations

import os
import shutil
import subprocess

from .. import errors

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def find_busybox() -> str:
    """Path of a statically linked busybox on the host, or ``Unsupported`` with the fix."""
    for cand in ("/bin/busybox", "/usr/bin/busybox", shutil.which("busybox") or ""):
        if cand and os.path.exists(cand):
            with open(cand, "rb") as f:
                head = f.read(1 << 16)
            # a dynamically linked ELF names its interpreter; busybox-static has no PT_INTERP
            if b"/lib64/ld-linux" not in head and b"/lib/ld-linux" not in head:
                return cand
    raise errors.Unsupported("busybox image", "needs a statically linked busybox",
                             fix="apt-get install busybox-static")


def applets(busybox: str) -> list[str]:
    """The applets this busybox provides (``busybox --list-full``: paths like ``bin/sh``)."""
    out = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def build_busybox_rootfs(dest: str, *, hostname: str = "labkit") -> None:
    """Populate the existing directory ``dest`` with a busybox root filesystem."""
    busybox = find_busybox()
    for d, mode in (("bin", 0o755), ("sbin", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755), ("etc", 0o755),
                    ("root", 0o700), ("tmp", 0o1777), ("proc", 0o555), ("sys", 0o555), ("dev", 0o755),
                    ("var/www", 0o755), ("home", 0o755)):
        p = os.path.join(dest, d)
        os.makedirs(p, exist_ok=True)
        os.chmod(p, mode)
    target = os.path.join(dest, "bin", "busybox")
    shutil.copy2(busybox, target)
    os.chmod(target, 0o755)
    for rel in applets(busybox):
        if rel == "bin/busybox":
            continue
        link = os.path.join(dest, rel)
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("/bin/busybox", link)
    for name, text in (("passwd", PASSWD), ("group", GROUP), ("hostname", hostname + "\n"),
                       ("hosts", "127.0.0.1 localhost\n::1 localhost\n")):
        with open(os.path.join(dest, "etc", name), "w") as f:
            f.write(text)
