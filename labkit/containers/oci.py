"""OCI runtime bundles: a directory with ``config.json`` that ``runc run`` (or crun) can run.

The configuration mirrors what labkit's own runtime sets up, so that start-latency comparisons compare
like with like: PID, network, IPC, UTS and mount namespaces; ``/proc``, a tmpfs ``/dev`` with
``/dev/pts`` and ``/dev/shm``, ``/sys`` read-only; the rootfs given by absolute path (not copied).
Like ``runc spec`` it keeps a small capability set and ``noNewPrivileges``.

>>> import json, tempfile
>>> d = tempfile.mkdtemp()
>>> cfg = write_bundle(d, "/tmp/rootfs", ["/bin/true"], hostname="box")
>>> json.load(open(d + "/config.json"))["process"]["args"]
['/bin/true']
>>> [n["type"] for n in cfg["linux"]["namespaces"]]
['pid', 'network', 'ipc', 'uts', 'mount']
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

OCI_VERSION = "1.0.2-dev"        # what Debian's runc 1.1.5 writes with `runc spec`
CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"]


def config(rootfs: str, cmd: Sequence[str], *, hostname: str = "labkit", env: Sequence[str] = (),
           cwd: str = "/", uid: int = 0, gid: int = 0, readonly: bool = False,
           cgroups_path: str | None = None, memory: int | None = None,
           pids: int | None = None) -> dict[str, Any]:
    """The ``config.json`` document (OCI runtime-spec 1.0) for running ``cmd`` in ``rootfs``."""
    caps = {k: list(CAPS) for k in ("bounding", "effective", "permitted", "ambient")}
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if memory is not None:
        resources["memory"] = {"limit": memory}
    if pids is not None:
        resources["pids"] = {"limit": pids}
    linux: dict[str, Any] = {
        "resources": resources,
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
    }
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    return {
        "ociVersion": OCI_VERSION,
        "process": {"terminal": False, "user": {"uid": uid, "gid": gid}, "args": list(cmd),
                    "env": list(DEFAULT_ENV) + list(env), "cwd": cwd, "capabilities": caps,
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
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


def write_bundle(bundle: str, rootfs: str, cmd: Sequence[str], **kw: Any) -> dict[str, Any]:
    """Write ``<bundle>/config.json`` for ``cmd`` in ``rootfs`` (see :func:`config` for options) and
    return the document. Run it with ``runc --root STATE run --bundle BUNDLE ID``."""
    os.makedirs(bundle, exist_ok=True)
    cfg = config(rootfs, cmd, **kw)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return cfg
