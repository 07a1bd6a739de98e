"""``labkit thin check|status|ls|dump PATH``: the thin-provisioning-tools commands for labkit pools.

The main CLI calls :func:`register` with its subparsers object; each command sets ``func(args) -> int``.

>>> import argparse
>>> p = argparse.ArgumentParser(); register(p.add_subparsers())
>>> p.parse_args(["thin", "ls", "/pool", "--no-headers"]).thin_command
'ls'
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from ..errors import FailedPrecondition, InvalidArgument
from .client import PoolClient
from .pool import Pool

T = TypeVar("T")

LS_FIELDS = ("DEV", "MAPPED_BLOCKS", "EXCLUSIVE_BLOCKS", "SHARED_BLOCKS", "MAPPED", "EXCLUSIVE", "SHARED",
             "TRANSACTION", "CREATE_TIME", "SNAP_TIME")
LS_DEFAULT = "DEV,MAPPED,CREATE_TIME,SNAP_TIME"  # thin_ls's default columns


def _open(path: str) -> Pool:
    # no time-based commits: these commands only read
    return Pool.open(path, commit_interval=None)


def disk_unit(nbytes: int) -> str:
    """Bytes as thin_ls prints them: ``256KiB``, ``1GiB``, ``1.5MiB``.

    >>> disk_unit(262144), disk_unit(3 << 29), disk_unit(0)
    ('256KiB', '1.5GiB', '0B')
    """
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    i, v = 0, float(nbytes)
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    text = f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{text}{units[i]}"


def _ask_daemon(path: str, ask: Callable[[PoolClient], T]) -> T | None:
    """``ask(client)`` of the daemon that holds the pool open; None when no daemon serves it (none is
    started: these commands only look)."""
    c = PoolClient(path, os.path.join(os.path.dirname(os.path.abspath(path)), "dev"))
    try:
        if not c.connect(start=False):
            return None
        return ask(c)
    finally:
        c.close()


def cmd_check(args: argparse.Namespace) -> int:
    """Recount every reference and check every tree; exit 1 if anything is wrong."""
    try:
        pool = _open(args.path)
    except FailedPrecondition:
        rep = _ask_daemon(args.path, PoolClient.check)  # a running daemon holds it: let it check its own pool
        if rep is None:
            raise
        print("checked by the pool's daemon:")
        print(rep)
        return 0 if rep.ok else 1
    with pool:
        rep = pool.check()
    print(rep)
    return 0 if rep.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    """Print the dm-thin status line (asking the pool's daemon when one holds it)."""
    try:
        pool = _open(args.path)
    except FailedPrecondition:
        st = _ask_daemon(args.path, PoolClient.status)
        if st is None:
            raise
        print(st)
        return 0
    with pool:
        print(pool.status())
    return 0


def _ls_rows(src: Pool | PoolClient, fields: list[str], headers: bool) -> list[list[str]]:
    bs = src.block_size
    rows = [fields] if headers else []
    for dev_id, u in src.usages().items():
        d = src.details(dev_id)
        val = {"DEV": dev_id, "MAPPED_BLOCKS": u.mapped_blocks, "EXCLUSIVE_BLOCKS": u.exclusive_blocks,
               "SHARED_BLOCKS": u.shared_blocks, "MAPPED": disk_unit(u.mapped_blocks * bs),
               "EXCLUSIVE": disk_unit(u.exclusive_blocks * bs), "SHARED": disk_unit(u.shared_blocks * bs),
               "TRANSACTION": d.transaction_id, "CREATE_TIME": d.creation_time, "SNAP_TIME": d.snap_time}
        rows.append([str(val[f]) for f in fields])
    return rows


def cmd_ls(args: argparse.Namespace) -> int:
    """List devices like thin_ls (right-justified columns), asking the pool's daemon when one holds it."""
    fields = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in fields if f not in LS_FIELDS]
    if bad:
        raise InvalidArgument(f"thin ls field {bad[0]!r}", "is unknown", fix=f"choose from {','.join(LS_FIELDS)}")
    try:
        pool = _open(args.path)
    except FailedPrecondition:
        rows = _ask_daemon(args.path, lambda c: _ls_rows(c, fields, not args.no_headers))
        if rows is None:
            raise
    else:
        with pool:
            rows = _ls_rows(pool, fields, not args.no_headers)
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(len(fields))]
    for r in rows:
        print("".join(c.rjust(w) + " " for c, w in zip(r, widths)))
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    """Write thin_dump XML to stdout or ``-o FILE`` (the pool must not be held by a daemon)."""
    with _open(args.path) as pool:
        if args.output:
            with open(args.output, "w") as f:
                pool.dump_xml(f)
        else:
            pool.dump_xml(sys.stdout)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``thin`` command group (check, status, ls, dump) to ``subparsers``."""
    thin = subparsers.add_parser("thin", help="inspect a labkit thin pool (like thin-provisioning-tools)")
    sub = thin.add_subparsers(dest="thin_command", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("check", help="verify trees and reference counts (like thin_check)")
    s.add_argument("path", help="pool directory")
    s.set_defaults(func=cmd_check)
    s = sub.add_parser("status", help="print the dm-thin status line")
    s.add_argument("path", help="pool directory")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("ls", help="list thin devices (like thin_ls)")
    s.add_argument("path", help="pool directory")
    s.add_argument("--no-headers", action="store_true", help="leave out the header row")
    s.add_argument("-o", "--format", default=LS_DEFAULT, help=f"comma-separated fields from {','.join(LS_FIELDS)}")
    s.set_defaults(func=cmd_ls)
    s = sub.add_parser("dump", help="write thin_dump XML")
    s.add_argument("path", help="pool directory")
    s.add_argument("-o", "--output", help="file to write (default stdout)")
    s.set_defaults(func=cmd_dump)
