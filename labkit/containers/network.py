"""Container networks with pyroute2: ``none`` (the default), ``bridge`` and ``host``.

* ``none``: a new network namespace with only ``lo`` (brought up by the container's own set-up code).
* ``bridge``: a bridge ``lk-br0`` (name configurable) holding the subnet's first address (10.88.0.1/16
  by default); per container a veth pair ``lk-<id>-h`` (host side, on the bridge) / ``eth0`` (inside),
  the next free address and a default route via the bridge. Containers reach each other and the host.
  Nothing leaves the machine unless ``nat=True`` adds an iptables MASQUERADE rule (off by default).
* ``host``: no network namespace.

The namespace is made **without a mount**: a short-lived thread unshares ``CLONE_NEWNET`` and opens
``/proc/thread-self/ns/net``; the fd goes to the spawner with the run request and the container joins it
with setns. The namespace then lives exactly as long as the container's processes do, so the veth pair
disappears with them and nothing under /run/netns can be left behind. Addresses are recorded in
``/run/labkit/ipam/<bridge>/<ip>`` (one file per container) under a host-wide lock.

>>> from labkit.containers.network import BridgeConfig
>>> BridgeConfig().gateway
'10.88.0.1'
>>> veth_name("0123456789")
'lk-0123456789-h'
"""
from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

from labkit import errors

from . import _ns

if TYPE_CHECKING:
    import ipaddress

RUN_DIR = "/run/labkit"
PREFIX = "lk-"


class _Bridge(NamedTuple):
    name: str = "lk-br0"
    subnet: str = "10.88.0.0/16"
    nat: bool = False


class BridgeConfig(_Bridge):
    """Where bridge-mode containers live: bridge name, subnet (the bridge takes its first address), NAT.

    A named tuple (``_replace`` makes a changed copy, unchecked): every `Runtime` makes one, and the
    frozen dataclass it was cost ~1 ms to create on every `labkit run` (docs/performance.md)."""

    __slots__ = ()

    def __new__(cls, name: str = "lk-br0", subnet: str = "10.88.0.0/16", nat: bool = False) -> BridgeConfig:
        if not name.startswith(PREFIX) or len(name) > 15:
            raise errors.InvalidArgument(f"bridge name {name!r}", "must start with lk- and have <= 15 chars")
        if subnet != _Bridge._field_defaults["subnet"]:   # (ipaddress: ~2 ms a default `labkit run` does without)
            import ipaddress
            if ipaddress.ip_network(subnet).num_addresses < 4:
                raise errors.InvalidArgument(f"subnet {subnet}", "too small", fix="use a /30 or larger")
        return super().__new__(cls, name, subnet, nat)

    @property
    def network(self) -> ipaddress.IPv4Network:
        import ipaddress
        return ipaddress.ip_network(self.subnet)  # type: ignore[return-value]

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)


def veth_name(cid: str) -> str:
    """Host-side veth name of container ``cid`` (at most 15 characters, so ids are at most 10)."""
    return f"{PREFIX}{cid}-h"


def _pyroute2() -> Any:
    try:
        import pyroute2
    except ImportError:
        raise errors.Unsupported("bridge network", "needs pyroute2", fix="pip install 'pyroute2>=0.9'") from None
    return pyroute2


def _in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh thread (whose namespaces it may change) and return its result or raise."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e
    t = threading.Thread(target=run, name="labkit-netns")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def new_netns() -> int:
    """A new, empty network namespace, as an fd (close it and the namespace goes once unused)."""
    def make() -> int:
        _ns.unshare(_ns.CLONE_NEWNET)
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    return _in_thread(make)


@contextmanager
def _lock() -> Iterator[None]:
    os.makedirs(RUN_DIR, exist_ok=True)
    with open(os.path.join(RUN_DIR, "network.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _ipam_dir(cfg: BridgeConfig) -> str:
    return os.path.join(RUN_DIR, "ipam", cfg.name)


def _allocate(cfg: BridgeConfig, cid: str) -> str:
    d = _ipam_dir(cfg)
    os.makedirs(d, exist_ok=True)
    taken = set(os.listdir(d))
    for host in cfg.network.hosts():
        ip = str(host)
        if ip != cfg.gateway and ip not in taken:
            with open(os.path.join(d, ip), "w") as f:
                f.write(cid)
            return ip
    raise errors.FailedPrecondition(f"subnet {cfg.subnet}", "no free address", fix="remove stopped containers")


def _release_ip(cfg: BridgeConfig, ip: str | None) -> None:
    if ip:
        try:
            os.unlink(os.path.join(_ipam_dir(cfg), ip))
        except FileNotFoundError:
            pass


def _ensure_bridge(ipr: Any, cfg: BridgeConfig) -> int:
    found = ipr.link_lookup(ifname=cfg.name)
    if found:
        return found[0]
    ipr.link("add", ifname=cfg.name, kind="bridge")
    idx = ipr.link_lookup(ifname=cfg.name)[0]
    ipr.addr("add", index=idx, address=cfg.gateway, prefixlen=cfg.network.prefixlen)
    ipr.link("set", index=idx, state="up")
    if cfg.nat:
        _nat(cfg, add=True)
    return idx


def _nat(cfg: BridgeConfig, *, add: bool) -> None:
    """MASQUERADE the subnet to other interfaces (only with ``nat=True``); enables ip_forward."""
    ipt = shutil.which("iptables")
    if ipt is None:
        raise errors.Unsupported("NAT for the labkit bridge", "needs iptables", fix="apt-get install iptables")
    rule = nat_rule(cfg)
    import subprocess  # (here: only NAT starts a tool; ~3 ms of every `labkit run`)
    if add:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
        subprocess.run([ipt, "-t", "nat", "-A", *rule], check=True, capture_output=True)
    else:
        subprocess.run([ipt, "-t", "nat", "-D", *rule], check=False, capture_output=True)


def nat_rule(cfg: BridgeConfig) -> list[str]:
    """The iptables POSTROUTING rule labkit adds for ``nat=True`` (tagged with a labkit comment).

    >>> " ".join(nat_rule(BridgeConfig()))
    'POSTROUTING -s 10.88.0.0/16 ! -o lk-br0 -j MASQUERADE -m comment --comment labkit-lk-br0'
    """
    return ["POSTROUTING", "-s", cfg.subnet, "!", "-o", cfg.name, "-j", "MASQUERADE",
            "-m", "comment", "--comment", f"labkit-{cfg.name}"]


class Attachment(NamedTuple):
    """A container's bridge attachment: its address and the namespace fd to hand to the spawner."""

    ip: str
    netns_fd: int


def _off_loop(fn: Callable[..., Any]) -> Callable[..., Any]:
    """pyroute2's synchronous API drives its own asyncio loop, which fails inside a running one (a
    Jupyter kernel's cell): run the call in a fresh thread, which has no loop."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        return _in_thread(lambda: fn(*args, **kw))
    return wrapper


@_off_loop
def attach(cid: str, cfg: BridgeConfig) -> Attachment:
    """Make a network namespace for ``cid`` wired to the bridge; on any failure nothing is left behind."""
    pr = _pyroute2()
    with _lock():
        ip = _allocate(cfg, cid)
    fd = None
    host_if = veth_name(cid)
    peer_tmp = f"{PREFIX}{cid}-c"
    try:
        with pr.IPRoute() as ipr:
            with _lock():
                br = _ensure_bridge(ipr, cfg)
            fd = new_netns()
            ipr.link("add", ifname=host_if, kind="veth", peer=peer_tmp)
            ipr.link("set", index=ipr.link_lookup(ifname=peer_tmp)[0], net_ns_fd=fd, ifname="eth0")
            ipr.link("set", index=ipr.link_lookup(ifname=host_if)[0], master=br, state="up")

        def inside() -> None:
            _ns.setns(fd, _ns.CLONE_NEWNET)
            with pr.IPRoute() as ns:
                lo = ns.link_lookup(ifname="lo")[0]
                ns.link("set", index=lo, state="up")
                eth = ns.link_lookup(ifname="eth0")[0]
                ns.addr("add", index=eth, address=ip, prefixlen=cfg.network.prefixlen)
                ns.link("set", index=eth, state="up")
                ns.route("add", dst="0.0.0.0/0", gateway=cfg.gateway)
        _in_thread(inside)
        return Attachment(ip, fd)
    except BaseException:
        if fd is not None:
            os.close(fd)
        _detach(cid, cfg, ip)
        raise


def _detach(cid: str, cfg: BridgeConfig, ip: str | None) -> None:
    """Release ``cid``'s veth (if the namespace still holds it), its address, and the bridge if unused."""
    pr = _pyroute2()
    with pr.IPRoute() as ipr:
        for name in (veth_name(cid), f"{PREFIX}{cid}-c"):
            for idx in ipr.link_lookup(ifname=name):
                try:
                    ipr.link("del", index=idx)
                except pr.NetlinkError:
                    pass            # gone meanwhile: the namespace died and took the pair with it
        with _lock():
            _release_ip(cfg, ip)
            _remove_bridge_if_unused(ipr, cfg)


def _remove_bridge_if_unused(ipr: Any, cfg: BridgeConfig) -> None:
    d = _ipam_dir(cfg)
    if os.path.isdir(d) and os.listdir(d):
        return
    found = ipr.link_lookup(ifname=cfg.name)
    if found:
        ports = [lk for lk in ipr.get_links() if lk.get("master") == found[0]]
        if ports:
            return
        ipr.link("del", index=found[0])
        if cfg.nat:
            _nat(cfg, add=False)
    if os.path.isdir(d):
        os.rmdir(d)


def wait_gone(cid: str, timeout: float = 2.0) -> None:
    """Wait until the kernel has destroyed ``cid``'s veth (namespace clean-up runs asynchronously)."""
    path = f"/sys/class/net/{veth_name(cid)}"
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)


detach = _off_loop(_detach)


def links() -> list[tuple[str, str]]:
    """(name, kind) of every ``lk-*`` interface in the host namespace (veth or bridge), from sysfs."""
    out: list[tuple[str, str]] = []
    try:
        names = os.listdir("/sys/class/net")
    except FileNotFoundError:
        return out
    for n in names:
        if n.startswith(PREFIX):
            kind = "bridge" if os.path.isdir(f"/sys/class/net/{n}/bridge") else "veth"
            out.append((n, kind))
    return sorted(out)


def ipam_records() -> list[tuple[str, str, str]]:
    """(bridge, ip, container id) of every recorded address."""
    out = []
    base = os.path.join(RUN_DIR, "ipam")
    for br in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        for ip in sorted(os.listdir(os.path.join(base, br))):
            try:
                with open(os.path.join(base, br, ip)) as f:
                    out.append((br, ip, f.read().strip()))
            except FileNotFoundError:
                pass
    return out


@_off_loop
def delete_link(name: str) -> None:
    """Delete one host interface by name (no error when it is already gone)."""
    pr = _pyroute2()
    with pr.IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=name):
            try:
                ipr.link("del", index=idx)
            except pr.NetlinkError:
                pass


def release_record(bridge: str, ip: str) -> None:
    """Forget an address record (gc of a container that is gone)."""
    _release_ip(BridgeConfig(name=bridge), ip)
    d = _ipam_dir(BridgeConfig(name=bridge))
    if os.path.isdir(d) and not os.listdir(d):
        os.rmdir(d)
