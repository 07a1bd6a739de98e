"""``labkit gc`` for the container runtime: leftover cgroups, processes, veths, bridges, netns, records.

Importing this module registers :func:`container_leftovers` with :func:`labkit._sys.leftovers.collector`.

Every container is recorded in ``/run/labkit/containers/<id>`` (its state directory). A container's
things are *leftovers* for ``gc(root)`` when its state directory is inside ``root`` and its shim is gone
(the container exited without ``remove``, or the shim was killed, or the host process crashed).
Objects are matched exactly: ``<id>`` is a labkit id (10 hex digits), a veth is ``lk-<id>-h``, a
cgroup ``labkit/<id>``; anything else with a similar name is not touched. Processes are killed only
inside those cgroups, each through a pidfd checked against the cgroup after it was opened
(:func:`labkit.containers.cgroups.kill_all`), so a recycled pid is never hit:

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
from functools import partial
from typing import Any

from labkit._sys import mounts
from labkit._sys.leftovers import CONTAINERS, Leftover, collector
from labkit._sys.leftovers import inside as _inside

from . import cgroups as cg
from . import network as net
from ._proc import alive
from .runtime import REGISTRY
from .state import is_id

NETNS_DIR = "/run/netns"


def _records() -> dict[str, str]:
    """Container id -> state directory, from the registry (entries with a malformed id are ignored)."""
    out: dict[str, str] = {}
    try:
        names = os.listdir(REGISTRY)
    except FileNotFoundError:
        return out
    for cid in names:
        if not is_id(cid):
            continue
        try:
            with open(os.path.join(REGISTRY, cid)) as f:
                out[cid] = os.path.normpath(f.read().strip())
        except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
            pass
    return out


def _state(state_dir: str | None, cid: str) -> dict[str, Any] | None:
    """The raw state.json (gc needs only the shim's pid and start time, and must read old formats)."""
    if not state_dir or not os.path.isabs(state_dir):
        return None
    path = os.path.join(state_dir, cid, "state.json")
    if not _inside(path, state_dir):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _running(state: dict[str, Any] | None) -> bool:
    """The shim still waits for PID 1: a container in normal use, not a leftover."""
    if not state:
        return False
    shim, start = state.get("shim"), state.get("shim_start")
    return isinstance(shim, int) and isinstance(start, int) and alive(shim, start)


def _release_cgroup(cid: str, dirs: list[str]) -> None:
    cg.kill_all(dirs, what=f"cgroup {cg.PARENT}/{cid}")
    for d in dirs:
        cg._rmdir(d)
        _rmdir_quiet(os.path.dirname(d))
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


def _veth_id(name: str) -> str | None:
    """``lk-<id>-h`` -> ``<id>``; anything else -> ``None``."""
    if name.startswith(net.PREFIX) and name.endswith("-h"):
        cid = name[len(net.PREFIX):-2]
        return cid if is_id(cid) else None
    return None


@collector(order=CONTAINERS)
def container_leftovers(root: str, everything: bool) -> list[Leftover]:
    """What crashed or unremoved containers of ``root`` (or, with ``everything``, of anyone) hold."""
    root = os.path.realpath(root)
    records = _records()
    cache: dict[str, bool] = {}

    def leftover(cid: str) -> bool:
        if not is_id(cid):
            return False
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
        groups = {cid: dirs for cid, dirs in cg.leftover_cgroups(layout).items() if is_id(cid)}
    except Exception:  # noqa: BLE001 - no cgroups mounted: nothing of ours there either
        groups = {}
    for cid, dirs in sorted(groups.items()):
        if leftover(cid):
            npids = len(cg.procs(dirs))
            out.append(Leftover("cgroup", f"{cg.PARENT}/{cid}", f"{len(dirs)} hierarchies, {npids} process(es)",
                                partial(_release_cgroup, cid, dirs)))
    for parent in layout.parents() if layout is not None else []:
        if os.path.isdir(parent) and not any(os.path.isdir(os.path.join(parent, n)) for n in os.listdir(parent)):
            out.append(Leftover("cgroup", parent, "empty labkit parent", partial(_rmdir_quiet, parent)))
    links = net.links()
    for name, kind in links:
        veth_of = _veth_id(name) if kind == "veth" else None
        if veth_of and leftover(veth_of):
            out.append(Leftover("veth", name, f"host end of container {veth_of}", partial(net.delete_link, name)))
    records_ip = net.ipam_records()
    for br, ip, cid in records_ip:
        if leftover(cid):
            out.append(Leftover("address", f"{br}/{ip}", f"of container {cid}",
                                partial(net.release_record, br, ip)))
    used_bridges = {br for br, _ip, cid in records_ip if not leftover(cid)}
    for name, kind in links:
        if kind == "bridge" and name.startswith(net.PREFIX) and name not in used_bridges:
            brif = f"/sys/class/net/{name}/brif"
            ports = os.listdir(brif) if os.path.isdir(brif) else []
            if everything or not ports:
                out.append(Leftover("bridge", name, f"{len(ports)} port(s)", partial(net.delete_link, name)))
    if os.path.isdir(NETNS_DIR):
        for n in sorted(os.listdir(NETNS_DIR)):
            cid = n[len(net.PREFIX):] if n.startswith(net.PREFIX) else ""
            if is_id(cid) and (everything or leftover(cid)):
                path = os.path.join(NETNS_DIR, n)
                out.append(Leftover("netns", path, "named network namespace", partial(_release_netns, path)))
    for cid in sorted(records):             # after its cgroup (released first, in this order)
        if leftover(cid):
            out.append(Leftover("record", os.path.join(REGISTRY, cid), f"state in {records[cid]}",
                                partial(_forget, cid)))
    return out
