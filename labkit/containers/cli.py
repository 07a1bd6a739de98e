"""``labkit container ...``: run, ps, exec, logs, stats, stop, rm, bench.

Registered like ``labkit.thin.cli``: add ``"labkit.containers.cli"`` to the module list in
``labkit/cli.py``. Container state lives in ``<root>/containers`` (``--root`` / ``$LABKIT_ROOT``).

::

    labkit container run --name web --network bridge --memory 64M -d ROOTFS -- httpd -f -p 8080
    labkit container ps
    labkit container exec web -- ps
    labkit container stop web && labkit container rm web
    labkit container bench ROOTFS --repeat 20

>>> p = argparse.ArgumentParser(); register(p.add_subparsers())
>>> p.parse_args(["container", "ps"]).func.__name__
'cmd_ps'
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..config import default_root


def _state_dir(args: argparse.Namespace) -> str:
    root = default_root(getattr(args, "root", None))
    return os.path.join(os.path.abspath(root), "containers")


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    from labkit.units import parse_size
    return parse_size(text)


def _runtime(args: argparse.Namespace):
    from .runtime import Runtime
    return Runtime(_state_dir(args))


def cmd_run(args: argparse.Namespace) -> int:
    """Run a command in a new container; print its output (or its id with -d) and exit with its code."""
    with _runtime(args) as rt:
        env = dict(e.split("=", 1) for e in args.env) if args.env else None
        c = rt.run(args.rootfs, _strip_dashdash(args.cmd), name=args.name, env=env, workdir=args.workdir,
                   user=args.user, hostname=args.hostname, network=args.network, memory=_size(args.memory),
                   cpus=args.cpus, pids=args.pids, readonly=args.read_only, binds=args.volume or (), detach=args.detach,
                   tty=args.tty and not args.detach, cap_add=args.cap_add or (), cap_drop=args.cap_drop or (),
                   privileged=args.privileged)
        if args.detach:
            print(c.id)
            return 0
        if c.pty is not None:
            code = c.pty.attach() or 0
        else:
            sys.stdout.write(c.logs())
            code = c.exit_code or 0
        if args.rm:
            c.remove()
        return code


def cmd_ps(args: argparse.Namespace) -> int:
    """List containers (all, like ``docker ps -a``)."""
    with _runtime(args) as rt:
        rows = rt.ps()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'ID':<11} {'NAME':<16} {'STATUS':<12} {'PID':<8} {'IP':<14} COMMAND")
    for r in rows:
        status = r["status"] + (f" ({r['exit_code']})" if r["exit_code"] is not None else "")
        print(f"{r['id']:<11} {r['name']:<16} {status:<12} {r['pid'] or '':<8} {r['ip'] or '':<14} {r['command']}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    """Run a command in a running container; print its output and exit with its code."""
    with _runtime(args) as rt:
        c = rt.get(args.container)
        if args.tty:
            with c.exec(_strip_dashdash(args.cmd), user=args.user, workdir=args.workdir, tty=True,
                        privileged=args.privileged) as pty:
                return pty.attach() or 0
        code, out = c.exec(_strip_dashdash(args.cmd), user=args.user, workdir=args.workdir,
                           privileged=args.privileged)
    sys.stdout.write(out)
    return code


def cmd_logs(args: argparse.Namespace) -> int:
    with _runtime(args) as rt:
        sys.stdout.write(rt.get(args.container).logs())
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _runtime(args) as rt:
        print(json.dumps(rt.get(args.container).stats(), indent=1))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    with _runtime(args) as rt:
        for name in args.containers:
            print(f"{name}: exit code {rt.get(name).stop(timeout=args.time)}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _runtime(args) as rt:
        for name in args.containers:
            rt.get(name).remove(force=args.force)
            print(f"removed {name}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Start-to-exit latency of /bin/true: labkit vs runc vs crun (medians, warm-up dropped)."""
    import tempfile

    from .bench import medians, start_latency
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as d:
        df = start_latency(d, args.rootfs, args.repeat)
    for name, sec in sorted(medians(df).items(), key=lambda kv: kv[1]):
        print(f"{name:<8} {sec * 1000:8.1f} ms")
    for name, reason in df.attrs["skipped"].items():
        print(f"{name:<8} skipped: {reason}")
    if args.out:
        df.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``container`` command group to ``subparsers``."""
    grp = subparsers.add_parser("container", help="run and manage containers (needs root)")
    sub = grp.add_subparsers(dest="container_command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("run", help="run a command in a new container")
    s.add_argument("rootfs", help="root directory (e.g. a mounted snapshot)")
    s.add_argument("cmd", nargs=argparse.REMAINDER, help="command and arguments (after --)")
    s.add_argument("--name")
    s.add_argument("--hostname")
    s.add_argument("-e", "--env", action="append", metavar="K=V")
    s.add_argument("-w", "--workdir", default="/")
    s.add_argument("-u", "--user")
    s.add_argument("--network", default="none", choices=["none", "bridge", "host"])
    s.add_argument("-m", "--memory", help="memory limit, e.g. 64M")
    s.add_argument("--cpus", type=float)
    s.add_argument("--pids", type=int, help="max processes")
    s.add_argument("--read-only", action="store_true")
    s.add_argument("-v", "--volume", action="append", metavar="HOST:CTR[:ro]")
    s.add_argument("-d", "--detach", action="store_true")
    s.add_argument("--rm", action="store_true", help="remove the container after it exits")
    s.add_argument("-t", "--tty", action="store_true", help="run on a terminal and attach this one (-it)")
    s.add_argument("-i", "--interactive", action="store_true", help="accepted for docker's -it; see --tty")
    s.add_argument("--cap-add", action="append", metavar="CAP", help="add a capability (or ALL)")
    s.add_argument("--cap-drop", action="append", metavar="CAP", help="drop a capability (or ALL)")
    s.add_argument("--privileged", action="store_true",
                   help="every capability, no seccomp, no masked paths, every device (docs/security.md)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("ps", help="list containers")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ps)

    s = sub.add_parser("exec", help="run a command in a running container")
    s.add_argument("container")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.add_argument("-u", "--user")
    s.add_argument("-w", "--workdir")
    s.add_argument("-t", "--tty", action="store_true", help="run on a terminal and attach this one (-it)")
    s.add_argument("-i", "--interactive", action="store_true", help="accepted for docker's -it; see --tty")
    s.add_argument("--privileged", action="store_true", help="lift the container's restrictions for this process")
    s.set_defaults(func=cmd_exec)

    for name, fn, hlp in (("logs", cmd_logs, "print a container's output"),
                          ("stats", cmd_stats, "print a container's cgroup usage")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("container")
        s.set_defaults(func=fn)

    s = sub.add_parser("stop", help="SIGTERM, then SIGKILL after --time seconds")
    s.add_argument("containers", nargs="+")
    s.add_argument("-t", "--time", type=float, default=10)
    s.set_defaults(func=cmd_stop)

    s = sub.add_parser("rm", help="remove containers")
    s.add_argument("containers", nargs="+")
    s.add_argument("-f", "--force", action="store_true", help="kill a running one first")
    s.set_defaults(func=cmd_rm)

    s = sub.add_parser("bench", help="start latency of /bin/true: labkit vs runc (vs crun)")
    s.add_argument("rootfs")
    s.add_argument("--repeat", type=int, default=20)
    s.add_argument("--out", help="CSV file for the rows")
    s.set_defaults(func=cmd_bench)


def _strip_dashdash(cmd: list[str]) -> list[str]:
    return cmd[1:] if cmd[:1] == ["--"] else cmd
