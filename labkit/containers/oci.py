"""OCI runtime bundles: a directory with ``config.json`` that ``runc run`` (or crun) can run.

The configuration mirrors what labkit's own runtime sets up, so that start-latency comparisons compare
like with like: PID, network, IPC, UTS and mount namespaces; ``/proc``, a tmpfs ``/dev`` with
``/dev/pts`` and ``/dev/shm``, ``/sys`` read-only; the rootfs given by absolute path (not copied).
It carries labkit's default security profile (:mod:`labkit.containers.security`): Docker's 14
capabilities, ``noNewPrivileges``, the same seccomp rules (as an OCI ``linux.seccomp`` document),
masked and read-only paths, rlimits, the devices allowlist.

>>> import json, tempfile
>>> d = tempfile.mkdtemp()
>>> cfg = write_bundle(d, "/tmp/rootfs", ["/bin/true"], hostname="box")
>>> json.load(open(d + "/config.json"))["process"]["args"]
['/bin/true']
>>> [n["type"] for n in cfg["linux"]["namespaces"]]
['pid', 'network', 'ipc', 'uts', 'mount']
"""
from __future__ import annotations

import errno
import json
import os
import platform
from collections.abc import Sequence
from typing import Any

from . import seccomp
from .security import DEVICE_RULES, Profile

OCI_VERSION = "1.0.2-dev"        # what Debian's runc 1.1.5 writes with `runc spec`
DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"]


def config(rootfs: str, cmd: Sequence[str], *, hostname: str = "labkit", env: Sequence[str] = (),
           cwd: str = "/", uid: int = 0, gid: int = 0, readonly: bool = False,
           cgroups_path: str | None = None, memory: int | None = None,
           pids: int | None = None) -> dict[str, Any]:
    """The ``config.json`` document (OCI runtime-spec 1.0) for running ``cmd`` in ``rootfs``."""
    profile = Profile.make()
    caps = {k: sorted(profile.caps) for k in ("bounding", "effective", "permitted")}
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}] + [_device(r) for r in DEVICE_RULES]}
    if memory is not None:
        resources["memory"] = {"limit": memory}
    if pids is not None:
        resources["pids"] = {"limit": pids}
    linux: dict[str, Any] = {
        "resources": resources,
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
        "maskedPaths": list(profile.masked_paths),
        "readonlyPaths": list(profile.readonly_paths),
        "seccomp": seccomp_profile(profile.caps),
    }
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    return {
        "ociVersion": OCI_VERSION,
        "process": {"terminal": False, "user": {"uid": uid, "gid": gid}, "args": list(cmd),
                    "env": list(DEFAULT_ENV) + list(env), "cwd": cwd, "capabilities": caps,
                    "rlimits": [{"type": f"RLIMIT_{n}", "soft": soft, "hard": hard}
                                for n, soft, hard in profile.rlimits],
                    "noNewPrivileges": True},
        "root": {"path": os.path.abspath(rootfs), "readonly": readonly},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": linux,
    }


def _device(rule: str) -> dict[str, Any]:
    kind, numbers, access = rule.split()
    major, minor = numbers.split(":")
    d: dict[str, Any] = {"allow": True, "type": kind, "access": access}
    if major != "*":
        d["major"] = int(major)
    if minor != "*":
        d["minor"] = int(minor)
    return d


_OCI_ARCHES = {"x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
               "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]}
_OCI_OPS = {"eq": "SCMP_CMP_EQ", "ne": "SCMP_CMP_NE", "masked_eq": "SCMP_CMP_MASKED_EQ"}


def seccomp_profile(caps: frozenset[str]) -> dict[str, Any]:
    """labkit's seccomp rules for ``caps`` as an OCI ``linux.seccomp`` document (runc and crun load it).

    >>> p = seccomp_profile(Profile.make().caps)
    >>> p["defaultAction"], any("keyctl" in r["names"] for r in p["syscalls"])
    ('SCMP_ACT_ERRNO', False)
    """
    out = []
    for r in seccomp.rules_for(frozenset(caps)):
        rule: dict[str, Any] = {"names": list(r.names)}
        if r.action == "allow":
            rule["action"] = "SCMP_ACT_ALLOW"
        else:
            rule["action"] = "SCMP_ACT_ERRNO"
            rule["errnoRet"] = getattr(errno, r.action.partition(":")[2])
        if r.args:
            rule["args"] = [{"index": i, "value": a, "valueTwo": b, "op": _OCI_OPS[op]} for i, op, a, b in r.args]
        out.append(rule)
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
            "architectures": _OCI_ARCHES.get(platform.machine(), []), "syscalls": out}


def write_bundle(bundle: str, rootfs: str, cmd: Sequence[str], **kw: Any) -> dict[str, Any]:
    """Write ``<bundle>/config.json`` for ``cmd`` in ``rootfs`` (see :func:`config` for options) and
    return the document. Run it with ``runc --root STATE run --bundle BUNDLE ID``."""
    os.makedirs(bundle, exist_ok=True)
    cfg = config(rootfs, cmd, **kw)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return cfg
