"""docker/podman-shaped verbs over :class:`labkit.Lab`: images, containers on snapshots of them, commit.

::

    labkit image import busybox|debian|DIR|FILE [--tag T]
    labkit image ls|tree|inspect REF|history REF|tag REF NEW|rm [-f] REF|prune [--all]|whatrequires REF
    labkit images [-q] [--format json] [--bytes] [--no-trunc]
    labkit run [--rm] [-d] [-it] [--name N] [--net none|bridge|host] [-m 64M] [-e K=V] [--env-file F]
               [-v HOST:CTR[:ro]] [-w DIR] [-u USER] [--hostname H] [--entrypoint CMD] [--read-only]
               [--privileged] [--cap-add CAP] [--cap-drop CAP] IMAGE [CMD...]
    labkit ps [-a] [-q] [--format json] | exec [-it] NAME CMD... | logs NAME | stop NAME | rm [-f] NAME
    labkit commit NAME [TAG] | df

Exit codes follow Docker's: 125 when labkit itself fails, 126 when the command cannot be executed, 127
when it is not found, otherwise the container's own (128+N when it died of signal N).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import errors
from .cli_format import Spinner, human_ago, human_size, print_json, print_table, read_env_file, short_id
from .config import default_root

#: Docker's exit codes for a failed ``run``/``exec``
EXIT_LABKIT, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND = 125, 126, 127


def _lab(args: argparse.Namespace) -> Any:
    from .lab import Lab  # pandas and the runtime load only for verbs that need a Lab
    # a CLI process is small: it forks its container itself rather than starting a helper interpreter
    return Lab(default_root(args.root), getattr(args, "backend", None) or None, fork="direct")


def _cmd(args: argparse.Namespace) -> list[str]:
    cmd = list(args.cmd)
    return cmd[1:] if cmd[:1] == ["--"] else cmd


def _records(df: Any) -> list[dict[str, Any]]:
    if df is None:
        return []
    if hasattr(df, "to_dict"):
        return df.to_dict(orient="records")
    return list(df)


def _sizes(args: argparse.Namespace) -> Any:
    return (lambda v: "" if v is None else str(int(v))) if getattr(args, "bytes", False) else human_size


def _when(args: argparse.Namespace) -> Any:
    from .cli_format import human_time
    return human_time if getattr(args, "no_trunc", False) else human_ago


def _ids(args: argparse.Namespace) -> Any:
    return lambda v: short_id(v, no_trunc=getattr(args, "no_trunc", False))


def _tags(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(v) if v else "<none>"
    return str(v) if v else "<none>"


def _listing(args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[tuple[str, str]],
             formats: dict[str, Any], id_key: str = "id") -> None:
    if getattr(args, "quiet", False):
        for r in rows:
            print(short_id(r.get(id_key), no_trunc=getattr(args, "no_trunc", False)))
    elif getattr(args, "format", None) == "json":
        print_json(rows)
    else:
        print_table(rows, columns, formats=formats)


# ---- images ----------------------------------------------------------------------------------------------
def cmd_image(args: argparse.Namespace) -> int:
    """``labkit image VERB`` and ``labkit images``."""
    with _lab(args) as lab:
        v = args.image_command
        if v == "import":
            what = f"importing {args.source}" + (f" as {args.tag}" if args.tag else "")
            with Spinner(what):
                iid = lab.import_image(args.source, tag=args.tag, ref=args.ref)
            print(short_id(iid))
        elif v in ("ls", "images"):
            rows = lab.images(as_frame=False)
            _listing(args, rows, [("IMAGE ID", "id"), ("TAGS", "tags"), ("PARENT", "parent"), ("CREATED", "created"),
                                  ("SIZE", "size"), ("EXCLUSIVE", "exclusive"), ("CREATED BY", "created_by")],
                     {"id": _ids(args), "parent": _ids(args), "tags": _tags, "created": _when(args),
                      "size": _sizes(args), "exclusive": _sizes(args)})
        elif v == "tree":
            print(lab.tree(exact=args.bytes))
        elif v == "inspect":
            print_json(lab.inspect(args.ref))
        elif v == "history":
            rows = lab.history(args.ref, as_frame=False)
            if getattr(args, "format", None) == "json":
                print_json(rows)
            else:
                print_table(rows, [("IMAGE", "id"), ("CREATED", "created"), ("CREATED BY", "created_by"),
                                   ("SIZE", "size"), ("RECIPE", "recipe"), ("COMMENT", "comment")],
                            formats={"id": _ids(args), "created": _when(args), "size": _sizes(args)})
        elif v == "tag":
            lab.tag(args.ref, args.new)
        elif v in ("rm", "prune"):
            rows = (lab.rmi(args.ref, force=args.force, as_frame=False) if v == "rm"
                    else lab.prune(all=args.all, dry_run=args.dry_run, as_frame=False))
            if getattr(args, "format", None) == "json":
                print_json(rows)
            else:
                for r in rows:
                    a = r.get("action")
                    if a == "kept":
                        print(f"kept: still used by {r.get('kept_by')}")
                    elif a == "untagged":
                        print(f"untagged: {r.get('what')}")
                    else:
                        print(f"{a}: {r.get('what')}  (frees {_sizes(args)(r.get('freed_bytes'))})")
                total = sum(int(r.get("freed_bytes") or 0) for r in rows)
                if len([r for r in rows if r.get("freed_bytes")]) > 1:
                    print(f"total: {_sizes(args)(total)}")
                if not rows:
                    print("nothing to remove")
        elif v == "whatrequires":
            print_json(lab.whatrequires(args.ref))
    return 0


# ---- containers ------------------------------------------------------------------------------------------
def _volumes(specs: Sequence[str]) -> list[str]:
    out = []
    for s in specs:
        parts = s.split(":")
        if (len(parts) not in (2, 3) or not parts[0] or not parts[1]
                or (len(parts) == 3 and parts[2] not in ("ro", "rw"))):
            raise errors.InvalidArgument(f"volume {s!r}", "is not HOST:CONTAINER[:ro]",
                                         fix="write e.g. -v /srv/data:/data:ro")
        if not os.path.isabs(parts[0]):
            raise errors.InvalidArgument(f"volume {s!r}", "needs an absolute host path",
                                         fix=f"write -v {os.path.abspath(parts[0])}:{parts[1]}")
        out.append(s if len(parts) == 3 and parts[2] == "ro" else ":".join(parts[:2]))
    return out


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, str] = {}
    for f in args.env_file or []:
        env.update(read_env_file(f))
    for e in args.env or []:
        k, sep, v = e.partition("=")
        if sep:
            env[k] = v
        elif k in os.environ:
            env[k] = os.environ[k]
    network = args.net or ("bridge" if args.publish else "none")   # -p needs a network: Docker's default, bridge
    opts: dict[str, Any] = dict(name=args.name, rm=args.rm, network=network, memory=args.memory, cpus=args.cpus,
                                pids=args.pids, env=env or None, binds=_volumes(args.volume or []),
                                readonly=args.read_only)
    if args.workdir:
        opts["workdir"] = args.workdir
    if args.user:
        opts["user"] = args.user
    extra = {"hostname": args.hostname, "privileged": args.privileged or None,
             "cap_add": tuple(args.cap_add or ()) or None, "cap_drop": tuple(args.cap_drop or ()) or None,
             "publish": tuple(args.publish or ()) or None}

    opts.update({k: v for k, v in extra.items() if v is not None})
    return opts


def _exit_code(c: Any, rc: Any = None) -> int:
    """Docker's exit code of LabContainer ``c`` (``rc``: its runtime container, when the caller has it)."""
    rc = c.runtime if rc is None else rc
    sig = getattr(rc, "signal", None) if rc is not None else None
    if sig:
        return 128 + int(sig)
    code = rc.exit_code if rc is not None else c.exit_code
    return int(code) if code is not None else 0


def _follow(c: Any, *, out: Any = None) -> int:
    """Stream the container's output until it exits; SIGINT/SIGTERM/SIGHUP are forwarded to it (a second
    one, or 2 s of ignoring the first, kills it, as ``docker stop`` does); returns Docker's exit code.

    The runtime's record is looked up once (each lookup reads every container's state.json); a container
    removed meanwhile by another process shows as no longer running."""
    out = out or sys.stdout
    rc = c.runtime
    log = os.path.join(rc.dir, "log") if rc is not None and hasattr(rc, "dir") else None
    got: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        got.append(signum)
        if rc is None:
            return
        rc.kill(signal.SIGKILL if len(got) > 1 else signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    pos = 0
    try:
        deadline = None
        while True:
            done = rc is None or not rc.running
            if log and os.path.exists(log):
                with open(log, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos += len(chunk)
                if chunk:
                    out.buffer.write(chunk) if hasattr(out, "buffer") else out.write(chunk.decode(errors="replace"))
                    out.flush()
            if done or rc is None:
                break
            if got and deadline is None:
                deadline = time.monotonic() + 2.0
            if deadline is not None and time.monotonic() > deadline:
                rc.kill(signal.SIGKILL)
            try:
                rc.wait(0.05)                        # a pidfd wait: wakes at once when the container exits
            except TimeoutError:
                pass
        if rc is not None:
            try:     # PID 1 is gone; its shim may still be writing the exit status: wait for the shim
                rc.wait(5)
            except TimeoutError:
                pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    code = _exit_code(c, rc)
    if got and code == 0 and rc is not None and rc.signal:
        code = 128 + got[0]
    return code


def _interactive(lab: Any, args: argparse.Namespace, image: str, cmd: list[str], opts: dict[str, Any]) -> int:
    """``run -it``: a pseudo-terminal between this terminal and the container."""
    from .containers import tty as ctty  # the runtime's terminal support
    c = lab.run(image, cmd, detach=True, tty=True, stdin=True, **opts)    # rm: an ephemeral snapshot
    try:
        code = ctty.attach(c.runtime)
    finally:
        if args.rm:
            c.remove(force=True)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    """``labkit run``: a container on a fresh snapshot of IMAGE."""
    if args.tty and not args.interactive:
        raise errors.InvalidArgument("-t without -i", "gives a terminal that cannot be typed into",
                                     fix="use -it for an interactive shell")
    opts = _run_options(args)
    with _lab(args) as lab:
        cmd = _cmd(args)
        if args.entrypoint is not None:
            opts["entrypoint"] = [args.entrypoint] if args.entrypoint else []
        if args.interactive and args.tty:
            return _interactive(lab, args, args.image, cmd, opts)
        if args.detach:
            c = lab.run(args.image, cmd, detach=True, **{k: v for k, v in opts.items() if k != "rm"})
            print(c.name)
            return 0
        c = lab.run(args.image, cmd, detach=True, **opts)     # rm: an ephemeral snapshot, removed below
        try:
            return _follow(c)
        finally:
            if args.rm:
                c.remove(force=True)


def _ps_rows(lab: Any, all_: bool) -> list[dict[str, Any]]:
    rows = lab.ps(all=all_, as_frame=False)
    for r in rows:
        if r.get("status") != "running":
            r["ip"] = None
        code = r.get("exit_code")
        r["state"] = r.get("status", "") + (f" ({code})" if r.get("status") == "exited" and code is not None else "")
    return rows


def cmd_ctr(args: argparse.Namespace) -> int:
    """``labkit ps|df|logs|exec|stop|rm|commit``."""
    with _lab(args) as lab:
        v = args.lab_command
        if v == "ps":
            rows = _ps_rows(lab, args.all)
            _listing(args, rows, [("CONTAINER ID", "id"), ("NAME", "name"), ("IMAGE", "image"), ("COMMAND", "command"),
                                  ("STATUS", "state"), ("NETWORK", "network"), ("IP", "ip")],
                     {"id": _ids(args), "ip": lambda x: x or "-", "image": _ids(args),
                      "command": str if args.no_trunc else (lambda x: _trunc(str(x), 30))})
        elif v == "df":
            rows = lab.df(as_frame=False)
            if args.format == "json":
                print_json(rows)
            else:
                s = _sizes(args)
                print_table(rows, [("KIND", "kind"), ("NAME", "name"), ("TOTAL", "total"), ("SHARED", "shared"),
                                   ("EXCLUSIVE", "exclusive"), ("RECLAIMABLE", "reclaimable")],
                            formats={"total": s, "shared": s, "exclusive": s, "reclaimable": s})
        elif v == "logs":
            sys.stdout.write(lab.container(args.name).output)
        elif v == "exec":
            if args.interactive and args.tty:
                from .containers import tty as ctty
                return ctty.exec_attach(lab.container(args.name).runtime, _cmd(args))
            code, out = lab.container(args.name).exec(_cmd(args))
            sys.stdout.write(out)
            return code
        elif v == "stop":
            lab.container(args.name).stop(timeout=args.time)
            print(args.name)
        elif v == "rm":
            lab.container(args.name).remove(force=args.force)
            print(args.name)
        elif v == "commit":
            print(short_id(lab.commit(args.name, args.tag)))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """``labkit check [--repair]``: the whole store in one report; exit 1 when something is wrong."""
    with _lab(args) as lab:
        rows = lab.check(repair=args.repair)
    if args.format == "json":
        print_json(rows)
    elif not rows:
        print(f"{lab.root}: clean (backend {lab.backend})")
    else:
        print_table(rows, [("PART", "part"), ("PROBLEM", "problem"), ("REPAIR", "repair")])
    return 1 if rows and not args.repair else 0


def _trunc(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _listing_flags(s: argparse.ArgumentParser, *, quiet: bool = True) -> None:
    if quiet:
        s.add_argument("-q", "--quiet", action="store_true", help="only ids")
    s.add_argument("--format", choices=["table", "json"], default="table", help="json for scripts")
    s.add_argument("--bytes", action="store_true", help="sizes in exact bytes")
    s.add_argument("--no-trunc", action="store_true", help="whole ids, commands and exact times")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], only: str | None = None) -> None:
    """Add ``image``, ``images``, ``build``, ``run``, ``ps``, ``exec``, ``logs``, ``stop``, ``rm``,
    ``commit``, ``df`` and ``check``; with ``only``, just that verb (what one command needs to parse)."""
    def wanted(verb: str) -> bool:
        return only is None or only == verb

    if wanted("image") or wanted("build"):
        from .images.cli import register_build, register_save
    if wanted("image"):
        _register_image(sub, register_save)
    if wanted("build"):
        register_build(sub, open_lab=_lab)
    if wanted("images"):
        s = sub.add_parser("images", help="list images")
        _listing_flags(s)
        s.set_defaults(func=cmd_image, image_command="images")
    if wanted("run"):
        _register_run(sub)
    if wanted("ps"):
        s = sub.add_parser("ps", help="list running containers (-a: all)")
        s.add_argument("-a", "--all", action="store_true", help="also exited containers")
        _listing_flags(s)
        s.set_defaults(func=cmd_ctr, lab_command="ps")
    if wanted("df"):
        s = sub.add_parser("df", help="space per image and container")
        _listing_flags(s, quiet=False)
        s.set_defaults(func=cmd_ctr, lab_command="df")
    if wanted("logs"):
        s = sub.add_parser("logs", help="a container's output")
        s.add_argument("name")
        s.set_defaults(func=cmd_ctr, lab_command="logs")
    if wanted("exec"):
        s = sub.add_parser("exec", help="run a command in a running container")
        s.add_argument("-i", "--interactive", action="store_true")
        s.add_argument("-t", "--tty", action="store_true")
        s.add_argument("name")
        s.add_argument("cmd", nargs=argparse.REMAINDER)
        s.set_defaults(func=cmd_ctr, lab_command="exec")
    if wanted("stop"):
        s = sub.add_parser("stop", help="SIGTERM, then SIGKILL after --time")
        s.add_argument("name")
        s.add_argument("-t", "--time", type=float, default=10)
        s.set_defaults(func=cmd_ctr, lab_command="stop")
    if wanted("rm"):
        s = sub.add_parser("rm", help="remove a container and its snapshot")
        s.add_argument("name")
        s.add_argument("-f", "--force", action="store_true")
        s.set_defaults(func=cmd_ctr, lab_command="rm")
    if wanted("check"):
        s = sub.add_parser("check", help="check the whole store (metadata, pool, images, rootfs dirs); --repair fixes")
        s.add_argument("--repair", action="store_true", help="make the repairs it lists")
        s.add_argument("--format", choices=["table", "json"], default="table")
        s.set_defaults(func=cmd_check)
    if wanted("commit"):
        s = sub.add_parser("commit", help="a new image from a container")
        s.add_argument("name")
        s.add_argument("tag", nargs="?")
        s.set_defaults(func=cmd_ctr, lab_command="commit")


def _register_image(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                    register_save: Any) -> None:
    img = sub.add_parser("image", help="manage images (import, save, ls, tree, inspect, history, tag, rm, prune, "
                         "whatrequires)")
    isub = img.add_subparsers(dest="image_command", metavar="VERB")
    isub.required = True
    s = isub.add_parser("import", help="register a base image: busybox, debian, a directory or an archive")
    s.add_argument("source")
    s.add_argument("--tag")
    s.add_argument("--ref", help="which image of an archive that holds several (e.g. localhost/app:v1)")
    s = isub.add_parser("ls", help="list images")
    _listing_flags(s)
    s = isub.add_parser("tree", help="lineage with sizes, recipe lines and hand commits")
    s.add_argument("--bytes", action="store_true", help="sizes in exact bytes")
    for verb, hlp in (("inspect", "everything about one image"),
                      ("whatrequires", "images and containers that depend on it")):
        isub.add_parser(verb, help=hlp).add_argument("ref")
    s = isub.add_parser("history", help="the chain back to the base, newest first")
    s.add_argument("ref")
    _listing_flags(s, quiet=False)
    s = isub.add_parser("tag", help="add a tag")
    s.add_argument("ref")
    s.add_argument("new")
    s = isub.add_parser("rm", help="remove an image (refused while used; -f untags now, prune deletes later)")
    s.add_argument("ref")
    s.add_argument("-f", "--force", action="store_true")
    _listing_flags(s, quiet=False)
    s = isub.add_parser("prune", help="remove dangling (or, with --all, unused) images; says what each frees")
    s.add_argument("-a", "--all", action="store_true")
    s.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    _listing_flags(s, quiet=False)
    register_save(isub, open_lab=_lab)
    img.set_defaults(func=cmd_image)


def _register_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("run", help="run a command in a container on a snapshot of IMAGE")
    s.add_argument("image")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.add_argument("--rm", action="store_true", help="throw the snapshot away when it exits")
    s.add_argument("-d", "--detach", action="store_true", help="run in the background; print its name")
    s.add_argument("-i", "--interactive", action="store_true", help="keep stdin open (with -t: a shell)")
    s.add_argument("-t", "--tty", action="store_true", help="a pseudo-terminal (with -i)")
    s.add_argument("--name", help="container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
    s.add_argument("--net", "--network", dest="net", default=None, choices=["none", "bridge", "host"],
                   help="default none; bridge when -p is given")
    s.add_argument("-m", "--memory", help="memory limit, e.g. 64M")
    s.add_argument("--cpus", type=float, help="CPU limit, e.g. 0.5")
    s.add_argument("--pids", "--pids-limit", dest="pids", type=int, help="process limit")
    s.add_argument("-e", "--env", action="append", metavar="K=V")
    s.add_argument("--env-file", action="append", metavar="FILE", help="KEY=VALUE lines")
    s.add_argument("-v", "--volume", action="append", metavar="HOST:CTR[:ro]", help="bind a host directory")
    s.add_argument("-p", "--publish", action="append", metavar="[IP:]HOST:CTR",
                   help="publish a port (127.0.0.1 unless an IP is given)")
    s.add_argument("-w", "--workdir", help="working directory inside")
    s.add_argument("-u", "--user", help="user[:group] inside, by name or number")
    s.add_argument("--hostname", help="hostname inside (default: the name)")
    s.add_argument("--entrypoint", help="the program to run; CMD becomes its arguments")
    s.add_argument("--read-only", action="store_true", help="a read-only root filesystem")
    s.add_argument("--privileged", action="store_true",
                   help="every capability, no seccomp, no masked paths (for lessons)")
    s.add_argument("--cap-add", action="append", metavar="CAP", help="add a capability (e.g. NET_ADMIN, ALL)")
    s.add_argument("--cap-drop", action="append", metavar="CAP", help="drop a capability (e.g. CHOWN, ALL)")
    s.set_defaults(func=cmd_run)
