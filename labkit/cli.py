"""The ``labkit`` command.

Global options: ``--root DIR`` (default ``$LABKIT_ROOT``, else ``/var/lib/labkit``) and ``--backend NAME``
(default ``$LABKIT_BACKEND``, else the most capable backend that runs here). Errors print one line and
exit 1; nothing half-made is left behind.

::

    labkit --version
    labkit backends
    labkit gc [--all] [--dry-run]
    labkit bench --list
    labkit bench snapshot-time --backend copy,overlay --sizes 16M,1G --repeat 5 --out data/st.csv
    labkit bench space-vs-containers --param containers=10 --param write=4M
    labkit bench thin-io --file-size 256M --repeat 3 --out data/thin-io.csv
    labkit thin check|status|ls|dump PATH
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from . import errors
from .config import default_root
from .version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def _root(args: argparse.Namespace) -> str:
    return default_root(args.root)


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
    done = gc(_root(args), everything=args.all, dry_run=args.dry_run, force=args.force)
    for line in done:
        print(("would release " if args.dry_run else "released ") + line)
    if not done:
        print(f"nothing to release for {_root(args)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run an experiment with a progress bar, print its summary and save the tidy CSV (+ JSON)."""
    from .experiments import framework
    from .experiments.executors import open_executor
    if args.list or not args.name:
        for name in framework.names():
            print(framework.get(name).describe())
        return 0
    exp = framework.get(args.name)
    params: dict[str, Any] = {}
    for item in args.param or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise errors.InvalidArgument(f"--param {item!r}", "is not key=value", fix="write e.g. --param size=16M,1G")
        params[k.strip().replace("-", "_")] = v
    # shorthands kept from the first version of the command
    if getattr(args, "backend", None):
        params["backend"] = args.backend
    if args.sizes:
        params["size"] = args.sizes
    if args.file_size:
        params["file_size"] = args.file_size
    for k, v in list(params.items()):
        p = exp.param(k)
        if isinstance(v, str) and p.sweep:
            params[k] = v.split(",")
    root = os.path.join(_root(args), "bench")
    with open_executor(args.executor) as executor:
        df = framework.run(args.name, repeat=args.repeat, root=root, progress=not args.quiet, executor=executor,
                           **params)
    print(f"{exp.name}: {exp.title} (medians, warm-up dropped)")
    print(exp.summarize(df).to_string(float_format=lambda x: f"{x:.4g}"))
    out = framework.save(df, args.out)
    print("wrote " + " and ".join(out.values()))
    failed = df.attrs.get("failed", {})
    for case, error in failed.items():
        print(f"failed: {case}: {error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} case(s) failed; the others' rows are saved", file=sys.stderr)
    return 1 if failed else 0


#: which module registers which verb, so that one verb's run imports only its own module (building every
#: verb's parser imported the whole package: ~90 ms of a `labkit run`); a test keeps this in step
VERB_MODULES: dict[str, str] = {
    **{v: "labkit.cli_lab" for v in ("image", "images", "build", "run", "ps", "df", "logs", "exec", "stop", "rm",
                                     "check", "commit")},
    "info": "labkit.cli_info", "completion": "labkit.cli_info",
    "thin": "labkit.thin.cli", "container": "labkit.containers.cli", "vm": "labkit.vm.cli",
}
#: modules whose ``register(sub, only=VERB)`` can add just the one verb being run (argparse takes ~1 ms
#: per subcommand to build: cli_lab's dozen verbs and their options were ~15 ms of a `labkit run`)
ONE_VERB_MODULES = {"labkit.cli_lab"}


#: the verbs this module registers itself
BUILTIN_VERBS = ("backends", "gc", "bench")


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI). With a known ``verb``, only that verb is
    registered (and only the module that registers it imported); without one, or with an unknown one
    (``labkit --help``, a typo), every verb."""
    p = argparse.ArgumentParser(prog="labkit", description="Teach, explore and measure container images.")
    p.add_argument("--version", action="version", version=f"labkit {__version__}")
    p.add_argument("--root", help="store root (default $LABKIT_ROOT, else /var/lib/labkit)")
    p.add_argument("--backend", help="snapshot backend (default $LABKIT_BACKEND, else the best one here)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    every = verb not in VERB_MODULES and verb not in BUILTIN_VERBS

    if every or verb == "backends":
        s = sub.add_parser("backends", help="list snapshot backends and whether they run here")
        s.set_defaults(func=cmd_backends)
    if every or verb == "gc":
        _register_gc(sub)
    if every or verb == "bench":
        _register_bench(sub)

    modules = sorted(set(VERB_MODULES.values()), key=list(dict.fromkeys(VERB_MODULES.values())).index)
    if not every:
        modules = [VERB_MODULES[verb]] if verb in VERB_MODULES else []
    for mod in modules:
        try:
            register: Callable[..., None] = importlib.import_module(mod).register
        except (ImportError, AttributeError):
            continue
        if verb in VERB_MODULES and mod in ONE_VERB_MODULES:
            register(sub, only=verb)
        else:
            register(sub)
    return p


def _register_gc(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("gc", help="release mounts, loop devices, daemons, cgroups and links left by a crash")
    s.add_argument("--all", action="store_true", help="also every labkit-named object outside this store")
    s.add_argument("--dry-run", action="store_true", help="only say what would be released")
    s.add_argument("--force", action="store_true", help="also mounts a live process still uses")
    s.set_defaults(func=cmd_gc)


def _register_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("bench", help="run an experiment and save tidy CSV (see --list)")
    s.add_argument("name", nargs="?", help="experiment name (labkit bench --list)")
    s.add_argument("--list", action="store_true", help="list experiments and their parameters")
    s.add_argument("--param", action="append", metavar="K=V", help="set a parameter (lists: K=a,b,c)")
    s.add_argument("--backend", default=argparse.SUPPRESS, help="shorthand for --param backend=... (comma-separated)")
    s.add_argument("--sizes", help="shorthand for --param size=... (snapshot-time)")
    s.add_argument("--file-size", help="shorthand for --param file_size=... (thin-io)")
    s.add_argument("--repeat", type=int, default=5, help="measured repetitions after one warm-up (default 5)")
    s.add_argument("--out", help="CSV file to write (default data/results/<name>-<time>.csv; JSON beside it)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--executor", metavar="SPEC",
                   help="where cases run: local (default), thread[:N], process[:N], dask[:N] (a local cluster, "
                        "2 workers), dask:tcp://HOST:8786 (a running scheduler); see docs/experiments.md")
    s.set_defaults(func=cmd_bench)


def _hoist_root(argv: list[str]) -> list[str]:
    """Accept the global ``--root DIR`` and ``--backend NAME`` after the command too (``labkit gc --root
    DIR``), as people type them; not after ``--`` (a container's own arguments), and ``--backend`` stays
    with ``bench``, which takes a list there.

    >>> _hoist_root(["gc", "--root", "/x", "--all"])
    ['--root', '/x', 'gc', '--all']
    >>> _hoist_root(["run", "img", "--backend", "thin", "--", "ls", "--root", "/"])
    ['--backend', 'thin', 'run', 'img', '--', 'ls', '--root', '/']
    """
    hoist = {"--root"} if "bench" in argv[:3] else {"--root", "--backend"}
    out, front, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out += argv[i:]
            break
        if a in hoist and i + 1 < len(argv):
            front += [a, argv[i + 1]]
            i += 2
            continue
        if any(a.startswith(h + "=") for h in hoist):
            front.append(a)
        else:
            out.append(a)
        i += 1
    return front + out


def _exit_code_for(args: argparse.Namespace, e: BaseException) -> int:
    """Docker's codes for ``run``/``exec``: 127 command not found, 126 cannot execute, 125 labkit failed;
    1 for every other verb."""
    if getattr(args, "func", None) is None or getattr(args, "command", None) not in ("run", "exec"):
        return 1
    text = str(e)
    if "cannot exec the command" in text:
        return 127 if ("No such file" in text or "not found" in text) else 126
    return 125


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``labkit`` console script (``argv`` None: ``sys.argv``, and the process ends here,
    see :func:`_exit_now`)."""
    code = _main(argv)
    if argv is None:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """End the process at once, without the interpreter's teardown, when nothing is left for it to do:
    no ``atexit`` callback (weakref finalizers, logging, executors and dask register theirs) and no
    thread it would wait for (daemon threads it would not). Freeing ~18,000 objects and ~190 modules
    one by one took 15-25 ms of a `labkit run` that the kernel does in one go (the spawner ends the same
    way). Returns when it cannot."""
    import atexit
    pending = getattr(atexit, "_ncallbacks", None)
    if pending is None or pending():
        return
    threading = sys.modules.get("threading")    # not imported: no thread was started through it
    if threading is not None:
        main = threading.main_thread()
        if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
            return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return              # a closed pipe: let the interpreter report it as it always does
    os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
    from .cli_format import cli_words
    words = _hoist_root(list(sys.argv[1:] if argv is None else argv))
    verb = next((w for i, w in enumerate(words) if not w.startswith("-")
                 and (i == 0 or words[i - 1] not in ("--root", "--backend"))), None)
    parser = build_parser(verb)
    args = parser.parse_args(words)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.root_parser = build_parser() if verb == "completion" else parser   # completion needs every verb
    prestarted = _prestart(args, verb)
    try:
        return int(args.func(args) or 0)
    except errors.LabkitError as e:
        print(f"labkit: {cli_words(str(e))}", file=sys.stderr)
        return _exit_code_for(args, e)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"labkit: {e.strerror or e}{where}", file=sys.stderr)
        return _exit_code_for(args, e)
    except KeyboardInterrupt:
        print("labkit: interrupted", file=sys.stderr)
        return 130
    finally:
        if prestarted is not None:
            prestarted[0].drop_prestart(prestarted[1])


def _prestart(args: argparse.Namespace, verb: str | None) -> tuple[Any, str] | None:
    """A verb that opens a store may wait for its backend to start something (thin: the pool's daemon,
    ~45 ms): begin it now, so that it comes up while the verb imports its modules (``labkit.lab`` and
    below), and end it afterwards if the verb never opened the store (docs/performance.md). Only with the
    backend named (``--backend``, ``$LABKIT_BACKEND``): choosing the default probes every backend.
    Returns ``(backend class, store)`` when something was begun."""
    backend = getattr(args, "backend", None) or os.environ.get("LABKIT_BACKEND")
    if not backend or VERB_MODULES.get(verb or "") != "labkit.cli_lab":
        return None
    from .snapshots import backend_class
    from .snapshots.capabilities import Prestarting
    try:
        cls = backend_class(backend)
        store = os.path.join(_root(args), "snapshots", backend)        # Lab's layout
        return (cls, store) if isinstance(cls, Prestarting) and cls.prestart(store) else None
    except (OSError, errors.LabkitError):
        return None                 # the verb's own open says what is wrong


if __name__ == "__main__":
    sys.exit(main())
