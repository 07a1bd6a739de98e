"""docker/podman-shaped verbs over :class:`labkit.Lab`: images, containers on snapshots of them, commit.

::

    labkit image import busybox|debian|DIR|FILE.tar [--tag T]
    labkit image ls|tree|inspect REF|history REF|tag REF NEW|rm [-f] REF|prune [--all]|whatrequires REF
    labkit images
    labkit run [--rm] [-d] [--name N] [--net none|bridge|host] [--memory 64M] [-e K=V] IMAGE CMD...
    labkit ps | exec NAME CMD... | logs NAME | stop NAME | rm [-f] NAME | commit NAME [TAG] | df
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from . import errors
from .config import default_root


def _lab(args: argparse.Namespace) -> Any:
    from .lab import Lab
    root = default_root(args.root)
    return Lab(root, getattr(args, "backend", None) or None)


def _cmd(args: argparse.Namespace) -> list[str]:
    cmd = list(args.cmd)
    return cmd[1:] if cmd[:1] == ["--"] else cmd


def _print_table(df: Any, columns: list[str] | None = None) -> None:
    if df is None or len(df) == 0:
        print("(none)")
        return
    print((df[columns] if columns else df).to_string(index=False))


def cmd_image(args: argparse.Namespace) -> int:
    with _lab(args) as lab:
        st = lab.store
        v = args.image_command
        if v == "import":
            iid = lab.import_image(args.source, tag=args.tag)
            print(iid[:12])
        elif v in ("ls", "images"):
            df = lab.images()
            if getattr(args, "json", False):
                print(df.to_json(orient="records", date_format="iso"))
            else:
                _print_table(df)
        elif v == "tree":
            print(lab.tree())
        elif v == "inspect":
            print(json.dumps(st.inspect(args.ref), indent=2, default=str))
        elif v == "history":
            for h in st.history(args.ref):
                print(f"{str(h.get('id', ''))[:12]:<13} {h.get('created_by', '')}")
        elif v == "tag":
            st.tag(args.ref, args.new)
        elif v == "rm":
            out = st.rmi(args.ref, force=args.force)
            print(json.dumps(out, default=str))
        elif v == "prune":
            out = st.prune(all=args.all)
            print(json.dumps(out, default=str))
        elif v == "whatrequires":
            print(json.dumps(st.whatrequires(args.ref), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    env = dict(e.split("=", 1) for e in args.env or [])
    with _lab(args) as lab:
        c = lab.run(args.image, _cmd(args), name=args.name, rm=args.rm, detach=args.detach, network=args.net,
                    memory=args.memory, cpus=args.cpus, pids=args.pids, env=env or None)
        if args.detach:
            print(c.name)
            return 0
        print(c.output, end="")
        return int(c.exit_code or 0)


def cmd_ctr(args: argparse.Namespace) -> int:
    with _lab(args) as lab:
        v = args.lab_command
        if v == "ps":
            _print_table(lab.ps())
        elif v == "df":
            _print_table(lab.df())
        elif v == "logs":
            print(lab.container(args.name).output, end="")
        elif v == "exec":
            code, out = lab.container(args.name).exec(_cmd(args))
            print(out, end="")
            return code
        elif v == "stop":
            lab.container(args.name).stop(timeout=args.time)
        elif v == "rm":
            lab.container(args.name).remove(force=args.force)
        elif v == "commit":
            print(lab.commit(args.name, args.tag)[:12])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``image``, ``images``, ``run``, ``ps``, ``exec``, ``logs``, ``stop``, ``rm``, ``commit``, ``df``."""
    img = sub.add_parser("image", help="manage images (import, ls, tree, inspect, history, tag, rm, prune, whatrequires)")
    isub = img.add_subparsers(dest="image_command", metavar="VERB")
    isub.required = True
    s = isub.add_parser("import", help="register a base image: busybox, debian, a directory or a rootfs tar")
    s.add_argument("source")
    s.add_argument("--tag")
    s = isub.add_parser("ls", help="list images")
    s.add_argument("--json", action="store_true")
    isub.add_parser("tree", help="lineage with sizes")
    for verb, hlp in (("inspect", "everything about one image"), ("history", "the chain back to the base"),
                      ("whatrequires", "images and containers that depend on it")):
        isub.add_parser(verb, help=hlp).add_argument("ref")
    s = isub.add_parser("tag", help="add a tag")
    s.add_argument("ref")
    s.add_argument("new")
    s = isub.add_parser("rm", help="remove an image (refused while used; -f says what it breaks)")
    s.add_argument("ref")
    s.add_argument("-f", "--force", action="store_true")
    s = isub.add_parser("prune", help="remove dangling (or, with --all, unused) images; prints what it freed")
    s.add_argument("--all", action="store_true")
    img.set_defaults(func=cmd_image)

    s = sub.add_parser("images", help="list images")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_image, image_command="images")

    s = sub.add_parser("run", help="run a command in a container on a snapshot of IMAGE")
    s.add_argument("image")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.add_argument("--rm", action="store_true", help="throw the snapshot away when it exits")
    s.add_argument("-d", "--detach", action="store_true")
    s.add_argument("--name")
    s.add_argument("--net", default="none", choices=["none", "bridge", "host"])
    s.add_argument("-m", "--memory")
    s.add_argument("--cpus", type=float)
    s.add_argument("--pids", type=int)
    s.add_argument("-e", "--env", action="append", metavar="K=V")
    s.set_defaults(func=cmd_run)

    for verb, hlp in (("ps", "list containers"), ("df", "space per image and container")):
        sub.add_parser(verb, help=hlp).set_defaults(func=cmd_ctr, lab_command=verb)
    for verb, hlp in (("logs", "a container's output"),):
        s = sub.add_parser(verb, help=hlp)
        s.add_argument("name")
        s.set_defaults(func=cmd_ctr, lab_command=verb)
    s = sub.add_parser("exec", help="run a command in a running container")
    s.add_argument("name")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_ctr, lab_command="exec")
    s = sub.add_parser("stop", help="SIGTERM, then SIGKILL after --time")
    s.add_argument("name")
    s.add_argument("-t", "--time", type=float, default=10)
    s.set_defaults(func=cmd_ctr, lab_command="stop")
    s = sub.add_parser("rm", help="remove a container and its snapshot")
    s.add_argument("name")
    s.add_argument("-f", "--force", action="store_true")
    s.set_defaults(func=cmd_ctr, lab_command="rm")
    s = sub.add_parser("commit", help="a new image from a container")
    s.add_argument("name")
    s.add_argument("tag", nargs="?")
    s.set_defaults(func=cmd_ctr, lab_command="commit")


__all__ = ["register", "errors"]
