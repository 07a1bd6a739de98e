"""The CLI verbs of recipes and archives: ``labkit build`` and ``labkit image save``.

They work on a Lab, which this package cannot import (it sits above the images layer), so the caller
hands over how to open one: ``labkit/cli_lab.py`` calls ``register_build(sub, open_lab=_lab)`` and
``register_save(isub, open_lab=_lab)``. The Lab must offer ``build(recipe, context, *, tag, build_args,
no_cache, progress) -> BuildResult`` and ``save(ref, path, *, format, compress) -> SaveReport``.

::

    labkit build [-f Labfile] [-t name:tag] [--build-arg K=V]... [--no-cache] [-q] [CONTEXT]
    labkit image save IMAGE -o FILE [--format oci-archive|docker-archive|rootfs] [--compress gzip|none]

>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> register_build(sub, open_lab=lambda args: None)
>>> a = p.parse_args(["build", "-t", "app:v1", "--build-arg", "V=2", "src"])
>>> a.tag, a.build_arg, a.context
('app:v1', ['V=2'], 'src')
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .. import errors
from ..units import format_size
from .formats import COMPRESSIONS, FORMATS

__all__ = ["register_build", "register_save", "cmd_build", "cmd_save", "recipe_path", "parse_build_args"]

OpenLab = Callable[[argparse.Namespace], AbstractContextManager[Any]]
#: the recipe names looked for in the context when ``-f`` is not given, in order
RECIPE_NAMES = ("Labfile", "Dockerfile")


def recipe_path(context: str, given: str | None) -> str:
    """The recipe to read: ``-f`` as given, else ``Labfile`` (or ``Dockerfile``) in the context."""
    if given:
        return given
    for name in RECIPE_NAMES:
        cand = os.path.join(context, name)
        if os.path.isfile(cand):
            return cand
    raise errors.NotFound(f"recipe in {context!r}", fix=f"write a {RECIPE_NAMES[0]} there, or give one with -f")


def parse_build_args(items: list[str] | None) -> dict[str, str]:
    """``--build-arg K=V`` values; a bare ``K`` takes the value of ``$K`` here (as Docker does).

    >>> parse_build_args(["A=1", "B=x=y"])
    {'A': '1', 'B': 'x=y'}
    """
    out: dict[str, str] = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not k:
            raise errors.InvalidArgument(f"--build-arg {item!r}", "has no name", fix="write --build-arg NAME=value")
        if sep:
            out[k] = v
        elif k in os.environ:
            out[k] = os.environ[k]
    return out


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_build(args: argparse.Namespace, open_lab: OpenLab) -> int:
    """``labkit build``: the build's progress, one line per step; ``-q``: only the image id."""
    context = args.context or "."
    recipe = recipe_path(context, args.file)
    with open_lab(args) as lab:
        result = lab.build(recipe, context, tag=args.tag, build_args=parse_build_args(args.build_arg),
                           no_cache=args.no_cache, progress=None if args.quiet else _say)
    if args.quiet:
        print(result.id)
    return 0


def cmd_save(args: argparse.Namespace, open_lab: OpenLab) -> int:
    """``labkit image save``: writes the archive, then one line saying what it holds."""
    if args.output == "-":
        raise errors.InvalidArgument("output '-'", "labkit writes image archives to files",
                                     fix="give -o FILE (the file appears whole or not at all)")
    with open_lab(args) as lab:
        r = lab.save(args.ref, args.output, format=args.format, compress=args.compress)
    what = f"{len(r.layers)} layer{'s' if len(r.layers) != 1 else ''}" if r.format != "rootfs" else "root filesystem"
    print(f"{r.path}: {r.format}, {what}, {format_size(r.bytes)}, image {r.short_id}"
          + (f" as {r.name}" if r.name else ""), file=sys.stdout)
    return 0


def register_build(sub: argparse._SubParsersAction[argparse.ArgumentParser], *,
                   open_lab: OpenLab) -> None:
    """Add ``labkit build`` to ``sub`` (the top-level subcommands)."""
    s = sub.add_parser("build", help="build an image from a recipe (a Labfile: a Dockerfile subset), step by step "
                       "with a cache")
    s.add_argument("context", nargs="?", help="the build context: the directory COPY reads (default .)")
    s.add_argument("-f", "--file", help="the recipe (default CONTEXT/Labfile, else CONTEXT/Dockerfile)")
    s.add_argument("-t", "--tag", help="name:tag for the result")
    s.add_argument("--build-arg", action="append", metavar="K=V", help="a value for an ARG of the recipe")
    s.add_argument("--no-cache", action="store_true", help="run every step again")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress; print the image id")
    s.set_defaults(func=lambda args: cmd_build(args, open_lab))


def register_save(isub: argparse._SubParsersAction[argparse.ArgumentParser], *,
                  open_lab: OpenLab) -> None:
    """Add ``save`` to ``labkit image``'s verbs (``isub``)."""
    s = isub.add_parser("save", help="write an image (its layers, config and history) to an archive that "
                        "podman load, skopeo and labkit image import read")
    s.add_argument("ref", metavar="IMAGE")
    s.add_argument("-o", "--output", required=True, metavar="FILE", help="the archive to write")
    s.add_argument("--format", choices=FORMATS, default="oci-archive",
                   help="oci-archive (default), docker-archive, or rootfs (the flattened tree, like docker export)")
    s.add_argument("--compress", choices=COMPRESSIONS,
                   help="layer compression (default: gzip for oci-archive, none for the others)")
    s.set_defaults(func=lambda args: cmd_save(args, open_lab))
