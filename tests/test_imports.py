"""What the CLI's fast paths import: no pandas, matplotlib, ipywidgets, numpy or IPython on the way to
running a container or listing images, so `labkit run` costs what the run costs, not what the notebooks'
libraries cost to import (they were ~420 ms of a 530 ms `labkit run`). And within labkit, a verb imports
only what it uses (docs/performance.md): `labkit run` on overlay loads neither the thin pool, nor gc and
its collectors, nor the image store's archive, recipe and export machinery; imports measured in a fresh
interpreter, from its ``sys.modules``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = {"pandas", "matplotlib", "ipywidgets", "numpy", "IPython", "tqdm", "scipy", "nbformat"}

#: modules no fast verb (run, images, ps, image import busybox) may load, with why they are costly
NEVER_FAST = {
    "labkit.thin": "the thin pool (its XML, checker, client: ~25 ms)",
    "labkit.gc": "gc imports every backend's collector (thin, dmthin, proxies, containers)",
    "labkit.containers.gc": "a collector, for `labkit gc` only",
    "labkit.containers.proxy": "published ports only",
    "labkit.snapshots.thin": "another backend",
    "labkit.snapshots.dmthin": "another backend",
    "labkit.images.build": "recipes: `labkit build` only",
    "labkit.images.recipe": "recipes",
    "labkit.images.context": "recipes",
    "labkit.images.save": "exports: `labkit image save` only",
    "labkit.images.layers": "exports",
    "labkit.images.interop": "archive imports",
    "labkit.images.archive": "archive imports",
    "labkit.images.tarsafe": "tar extraction",
    "labkit.images.minimal": "minimal images",
    "labkit.experiments": "benchmarks",
    "labkit.widgets": "notebook panels",
    "labkit.vm": "the VM",
    "logging": "nothing on these paths logs",
    "hashlib": "OpenSSL's libcrypto: ~3-6 ms to load (CPython's own _sha1/_sha256 do the job)",
    "_hashlib": "OpenSSL",
    "secrets": "imports hmac and so OpenSSL",
    "pyseccomp": "runs ldconfig on import; the compiled filter is cached in /run/labkit/seccomp",
    "ctypes.util": "find_library runs ldconfig and gcc",
    "tarfile": "archives only",
}
#: and `labkit run` also none of these: listings, reports and the rest of the image store
NEVER_RUN = {
    "labkit.images.listing": "the records of listings (ImageInfo ...): run needs the config only",
    "labkit.images.reports": "the records of rmi/prune/check/save/build",
    "labkit.images.lineage": "tree and df",
    "labkit.images.repair": "check --repair",
    "labkit.images.sync": "commit of a running container",
    "labkit.images.sources": "base images",
    "labkit.images.busybox": "base images",
    "labkit.images.cli": "build and save verbs",
    "labkit.containers.tty": "-t only",
    "labkit.containers.oci": "runc bundles",
    "labkit.snapshots.loopfs": "other backends",
    "tempfile": "making images and compiling filters (it loads random)",
    "socket": "the spawner helper's channel: a direct fork does without",
    "platform": "~2.5 ms; os.uname() says what platform.machine()/release() say",
    "dataclasses": "loads inspect, ast, dis and tokenize (~8 ms) and compiles each class's methods (~1 ms each): "
                   "run-path types are labkit._sys.record records",
    "inspect": "~8 ms with ast, dis and tokenize",
    "subprocess": "~3 ms with selectors: a run on overlay starts no tool",
    "ipaddress": "~2 ms: the default bridge subnet is never parsed",
}

#: and `labkit run` on a thin store none of these: it talks to the pool's daemon, which it forks and which
#: imports the pool and FUSE itself
NEVER_THIN_RUN = {
    "labkit.thin.pool": "the pool: the daemon's", "labkit.thin.check": "CheckReport: pool_check() only",
    "labkit.thin.xml": "thin_dump XML", "labkit.thin.metadata": "the pool's metadata: the daemon's",
    "labkit.thin.records": "Status, Usage ...: status() and usage() only", "labkit.thin.daemon": "the daemon",
    "labkit.thin.exportfs": "FUSE: the daemon's", "mfusepy": "FUSE: the daemon's",
    "logging": "registers an atexit callback, which keeps the process from ending at once",
    "hashlib": NEVER_FAST["hashlib"],
}

PROBE = """
import atexit, json, sys, threading
from labkit.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "mods": sorted(sys.modules), "atexit": atexit._ncallbacks(),
                  "threads": threading.active_count()}))
"""


def _probe(*argv: str) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _imports(*argv: str) -> tuple[int, set[str]]:
    data = _probe(*argv)
    return data["rc"], set(data["mods"])


def _loaded(mods: set[str], banned: dict[str, str]) -> dict[str, str]:
    """The banned modules in ``mods`` (a package counts with its submodules), with why they are banned."""
    return {b: why for b, why in banned.items() if any(m == b or m.startswith(b + ".") for m in mods)}


def test_version_and_help_are_light():
    rc, mods = _imports("backends")
    tops = {m.split(".")[0] for m in mods}
    assert rc == 0 and not tops & HEAVY, tops & HEAVY


@pytest.mark.root
def test_run_and_images_import_nothing_heavy(tmp_path):
    R = ["--root", str(tmp_path / "lab"), "--backend", "overlay"]
    warm = ["run", "--rm", *R, "busybox", "true"]    # the first run on a host compiles the seccomp filter
    for argv in (["image", "import", "busybox", *R], warm, ["run", "--rm", *R, "busybox", "true"], ["images", *R],
                 ["ps", "-a", *R]):
        rc, mods = _imports(*argv)
        assert rc == 0, argv
        tops = {m.split(".")[0] for m in mods}
        assert not tops & HEAVY, f"labkit {' '.join(argv[:2])} imported {sorted(tops & HEAVY)}"
        if argv is warm:
            continue
        bad = _loaded(mods, NEVER_FAST | (NEVER_RUN if argv[0] == "run" else {}))
        assert not bad, f"labkit {' '.join(argv[:2])} imported: " + "; ".join(f"{m} ({why})" for m, why in bad.items())


@pytest.mark.root
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse (modprobe fuse)")
def test_thin_run_loads_the_client_only_and_can_end_at_once(tmp_path):
    """On thin, `labkit run` talks to the pool's daemon: no pool, FUSE, records or logging in the CLI
    process (logging's atexit callback alone cost it the fast end, 15-25 ms), no thread left, and the
    daemon it started is gone when it ends."""
    from labkit.thin.gc import pool_daemons
    R = ["--root", str(tmp_path / "lab"), "--backend", "thin"]
    assert _probe("image", "import", "busybox", *R)["rc"] == 0
    data = _probe("run", "--rm", *R, "busybox", "true")
    assert data["rc"] == 0
    banned = {k: v for k, v in (NEVER_THIN_RUN | NEVER_RUN).items() if k != "socket"}   # (the client's)
    bad = _loaded(set(data["mods"]), banned)
    assert not bad, "labkit run (thin) imported: " + "; ".join(f"{m} ({why})" for m, why in bad.items())
    assert (data["atexit"], data["threads"]) == (0, 1)
    assert pool_daemons(str(tmp_path), False) == []


def test_run_registers_only_its_own_verb():
    """`labkit run` builds the parser of `run` alone (each subcommand costs argparse about a millisecond,
    most of it in gettext looking for translations of its help texts)."""
    from labkit.cli import build_parser
    sub = next(a for a in build_parser("run")._actions if a.dest == "command")
    assert sorted(sub.choices) == ["run"]
    sub = next(a for a in build_parser("gc")._actions if a.dest == "command")
    assert sorted(sub.choices) == ["gc"]
    for verb in (None, "no-such-verb"):          # `labkit --help`, and a typo's error message: every verb
        every = next(a for a in build_parser(verb)._actions if a.dest == "command")
        assert {"backends", "gc", "bench", "image", "images", "build", "run", "ps", "exec", "commit", "check"} \
            <= set(every.choices)


def test_lazy_package_names_resolve():
    """The packages that import their names on first use (PEP 562) still offer every name of __all__."""
    import labkit.images as images
    import labkit.images.records as records
    import labkit.thin as thin
    for mod in (images, records, thin):
        for name in mod.__all__:
            assert getattr(mod, name) is not None, f"{mod.__name__}.{name}"
        assert set(mod.__all__) <= set(dir(mod))
        with pytest.raises(AttributeError):
            mod.__getattr__("no_such_name")


def test_save_formats_are_named_once():
    """The CLI offers save's formats from labkit.images.formats, without importing the writer, which
    checks against the same tuples."""
    from labkit.images import formats, save
    assert save.FORMATS is formats.FORMATS and save.COMPRESSIONS is formats.COMPRESSIONS
