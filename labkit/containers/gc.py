"""``labkit gc`` for the container runtime: leftover cgroups, processes, veths, bridges, netns, records.

Importing this module registers :func:`container_leftovers` with :func:`labkit._sys.leftovers.collector`.

Every container is recorded in ``/run/labkit/containers/<id>`` (its state directory). A container's
things are *leftovers* for ``gc(root)`` when its state directory is inside ``root`` and its shim is gone
(the container exited without ``remove``, or the shim was killed, or the host process crashed):

* ``cgroup labkit/<id>``: its processes are killed (a PID 1 whose shim was killed, a frozen tree) and
  its directories removed in every hierarchy (v1 controllers and the v2 tree);
* ``veth lk-<id>-h`` and the address record of ``<id>``;
* ``bridge lk-*`` with no ports and no address records;
* ``netns /run/netns/lk-*`` (labkit does not make them, but older tools or hand-made ones are released);
* the ``/run/labkit/containers/<id>`` record itself.

With ``everything=True`` every labkit-named object counts, running containers included (they are
killed): that is ``labkit gc --all``, the big hammer after a crash.

>>> from labkit.containers.gc import container_leftovers
>>> container_leftovers("/nonexistent/labkit-root", False)
[]
"""
from __future__ import annotations

import json
import os
from typing import Any

from labkit._sys import mounts
from labkit._sys.leftovers import CONTAINERS, Leftover, collector
from labkit._sys.leftovers import inside as _inside

from . import cgroups as cg
from . import network as net
from .runtime import REGISTRY, _alive

NETNS_DIR = "/run/netns"


def _records() -> dict[str, str]:
    out = {}
    try:
        names = os.listdir(REGISTRY)
    except FileNotFoundError:
        return out
    for cid in names:
        try:
            with open(os.path.join(REGISTRY, cid)) as f:
                out[cid] = f.read().strip()
        except FileNotFoundError:
            pass
    return out


def _state(state_dir: str | None, cid: str) -> dict[str, Any] | None:
    if not state_dir:
        return None
    try:
        with open(os.path.join(state_dir, cid, "state.json")) as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def _running(state: dict[str, Any] | None) -> bool:
    """The shim still waits for PID 1: a container in normal use, not a leftover."""
    return bool(state) and _alive(state.get("shim"), state.get("shim_start"))  # type: ignore[union-attr]


def _release_cgroup(cid: str, dirs: list[str]) -> None:
    import signal
    import time
    deadline = time.monotonic() + 5
    while True:
        pids: set[int] = set()
        for d in dirs:
            try:
                with open(d + "/cgroup.procs") as f:
                    pids.update(int(x) for x in f.read().split())
            except FileNotFoundError:
                pass
        if not pids or time.monotonic() > deadline:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for d in dirs:                      # frozen tasks die only once thawed
            for fname, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                if os.path.exists(os.path.join(d, fname)):
                    with open(os.path.join(d, fname), "w") as f:
                        f.write(value)
        time.sleep(0.01)
    for d in dirs:
        cg._rmdir(d)
        try:
            os.rmdir(os.path.dirname(d))
        except OSError:
            pass
    net.wait_gone(cid, timeout=1.0)


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass                                # a container was created in it meanwhile


def _forget(cid: str) -> None:
    try:
        os.unlink(os.path.join(REGISTRY, cid))
    except FileNotFoundError:
        pass


def _release_netns(path: str) -> None:
    try:
        mounts.umount(path, mounts.MNT_DETACH)
    except OSError:
        pass
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@collector(order=CONTAINERS)
def container_leftovers(root: str, everything: bool) -> list[Leftover]:
    """What crashed or unremoved containers of ``root`` (or, with ``everything``, of anyone) hold."""
    root = os.path.realpath(root)
    records = _records()
    cache: dict[str, bool] = {}

    def leftover(cid: str) -> bool:
        if cid not in cache:
            state_dir = records.get(cid)
            if everything:
                cache[cid] = True
            elif state_dir is None or not _inside(state_dir, root):
                cache[cid] = False
            else:
                cache[cid] = not _running(_state(state_dir, cid))
        return cache[cid]

    out: list[Leftover] = []
    layout = None
    try:
        layout = cg.detect()
        groups = cg.leftover_cgroups(layout)
    except Exception:  # noqa: BLE001 - no cgroups mounted: nothing of ours there either
        groups = {}
    for cid, dirs in sorted(groups.items()):
        if leftover(cid):
            npids = sum(len(open(d + "/cgroup.procs").read().split()) for d in dirs if os.path.exists(d + "/cgroup.procs"))
            out.append(Leftover("cgroup", f"{cg.PARENT}/{cid}", f"{len(dirs)} hierarchies, {npids} process(es)",
                                (lambda c=cid, ds=dirs: _release_cgroup(c, ds))))
    for parent in layout.parents() if groups is not None and layout is not None else []:
        if os.path.isdir(parent) and not any(os.path.isdir(os.path.join(parent, n)) for n in os.listdir(parent)):
            out.append(Leftover("cgroup", parent, "empty labkit parent", (lambda p=parent: _rmdir_quiet(p))))
    links = net.links()
    for name, kind in links:
        if kind == "veth" and name.endswith("-h"):
            cid = name[len(net.PREFIX):-2]
            if leftover(cid):
                out.append(Leftover("veth", name, f"host end of container {cid}",
                                    (lambda n=name: net.delete_link(n))))
    records_ip = net.ipam_records()
    for br, ip, cid in records_ip:
        if leftover(cid):
            out.append(Leftover("address", f"{br}/{ip}", f"of container {cid}",
                                (lambda b=br, i=ip: net.release_record(b, i))))
    used_bridges = {br for br, _ip, cid in records_ip if not leftover(cid)}
    for name, kind in links:
        if kind == "bridge" and name not in used_bridges:
            ports = os.listdir(f"/sys/class/net/{name}/brif") if os.path.isdir(f"/sys/class/net/{name}/brif") else []
            if everything or not ports:
                out.append(Leftover("bridge", name, f"{len(ports)} port(s)", (lambda n=name: net.delete_link(n))))
    if os.path.isdir(NETNS_DIR):
        for n in sorted(os.listdir(NETNS_DIR)):
            if n.startswith(net.PREFIX) and (everything or leftover(n[len(net.PREFIX):])):
                out.append(Leftover("netns", os.path.join(NETNS_DIR, n), "named network namespace",
                                    (lambda p=os.path.join(NETNS_DIR, n): _release_netns(p))))
    for cid in sorted(records):
        if cid not in groups and leftover(cid):
            out.append(Leftover("record", os.path.join(REGISTRY, cid), f"state in {records[cid]}",
                                (lambda c=cid: _forget(c))))
    return out
