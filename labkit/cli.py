"""The ``labkit`` command.

Global options: ``--root DIR`` (default ``$LABKIT_ROOT``, else ``/var/lib/labkit``) and ``--backend NAME``
(default ``$LABKIT_BACKEND``, else the most capable backend that runs here). Errors print one line and
exit 1; nothing half-made is left behind.

::

    labkit --version
    labkit backends
    labkit gc [--all] [--dry-run]
    labkit bench snapshot-time --backend copy,overlay --sizes 16M,1G --repeat 5 --out data/st.csv
    labkit bench thin-io --file-size 256M --repeat 3 --out data/thin-io.csv
    labkit thin check|status|ls|dump PATH
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, Sequence

from . import __version__, errors

DEFAULT_ROOT = "/var/lib/labkit"


def _root(args: argparse.Namespace) -> str:
    return os.path.abspath(args.root or os.environ.get("LABKIT_ROOT") or DEFAULT_ROOT)


def _backend(args: argparse.Namespace) -> str:
    from .snapshots import default_backend
    return args.backend or os.environ.get("LABKIT_BACKEND") or default_backend(_root(args))


def cmd_backends(args: argparse.Namespace) -> int:
    """Print every backend, whether it runs here, and if not why and the fix."""
    from .snapshots import backend_status
    rows = backend_status(_root(args))
    default = next((s.name for s in rows if s.available), None)
    print(f"{'BACKEND':<9} {'AVAILABLE':<10} NOTES")
    for s in rows:
        note = s.doc if s.available else s.reason
        mark = "yes" + (" *" if s.name == default else "")
        print(f"{s.name:<9} {mark if s.available else 'no':<10} {note}")
    print("* default here (set another with --backend or LABKIT_BACKEND)")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """Release mounts and loop devices a crashed labkit left for this store."""
    from .gc import gc
    done = gc(_root(args), everything=args.all, dry_run=args.dry_run)
    for line in done:
        print(("would release " if args.dry_run else "released ") + line)
    if not done:
        print(f"nothing to release for {_root(args)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark, print its medians and save the tidy CSV."""
    from .experiments import save
    root = os.path.join(_root(args), "bench")
    if args.name == "snapshot-time":
        from .experiments import snapshot_time
        from .snapshots import backend_names
        backends = args.backend.split(",") if getattr(args, "backend", None) else [_backend(args)]
        for b in backends:
            if b not in backend_names():
                raise errors.InvalidArgument(f"backend {b!r}", "is unknown",
                                             fix=f"choose from {', '.join(backend_names())}")
        df = snapshot_time.run(backends, args.sizes.split(","), repeat=args.repeat, root=root,
                               progress=not args.quiet)
        print("median seconds of prepare + mount (warm-up dropped):")
        print(snapshot_time.medians(df).to_string(float_format=lambda x: f"{x:.4f}"))
    elif args.name == "thin-io":
        from .experiments import thin_io
        df = thin_io.run(root=root, file_size=args.file_size, repeat=args.repeat, progress=not args.quiet)
        print("median MiB/s (warm-up dropped), thin = FUSE + loop + ext4, loop = plain loop file + ext4:")
        print(thin_io.ratios(df).to_string(float_format=lambda x: f"{x:.2f}"))
    else:
        raise errors.InvalidArgument(f"benchmark {args.name!r}", "is unknown", fix="choose snapshot-time or thin-io")
    if args.out:
        csv, meta = save(df, args.out)
        print(f"wrote {csv} and {meta}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    p = argparse.ArgumentParser(prog="labkit", description="Teach, explore and measure container images.")
    p.add_argument("--version", action="version", version=f"labkit {__version__}")
    p.add_argument("--root", help="store root (default $LABKIT_ROOT, else /var/lib/labkit)")
    p.add_argument("--backend", help="snapshot backend (default $LABKIT_BACKEND, else the best one here)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("backends", help="list snapshot backends and whether they run here")
    s.set_defaults(func=cmd_backends)

    s = sub.add_parser("gc", help="release mounts and loop devices left by a crash")
    s.add_argument("--all", action="store_true", help="also every labkit-named object outside this store")
    s.add_argument("--dry-run", action="store_true", help="only say what would be released")
    s.set_defaults(func=cmd_gc)

    s = sub.add_parser("bench", help="run a benchmark and save tidy CSV")
    s.add_argument("name", help="snapshot-time or thin-io")
    s.add_argument("--backend", default=argparse.SUPPRESS, help="comma-separated backends (default: the best one here)")
    s.add_argument("--sizes", default="16M,256M,1G", help="comma-separated parent sizes (default 16M,256M,1G)")
    s.add_argument("--file-size", default="256M", help="thin-io: size of the file written and read (default 256M)")
    s.add_argument("--repeat", type=int, default=5, help="measured repetitions after one warm-up (default 5)")
    s.add_argument("--out", help="CSV file to write (an environment JSON goes beside it)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_bench)

    for mod in ("labkit.thin.cli",):
        try:
            register: Callable[[argparse._SubParsersAction], None] = importlib.import_module(mod).register
        except (ImportError, AttributeError):
            continue
        register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``labkit`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except errors.LabkitError as e:
        print(f"labkit: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"labkit: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("labkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
