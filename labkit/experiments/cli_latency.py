"""Experiment ``cli-latency``: the whole ``labkit run --rm IMAGE true`` process against its peers.

What a student waits for after pressing Enter: interpreter start, imports, store, snapshot, container,
clean-up, exit. Every peer is one whole process doing the same job on the same busybox root filesystem,
network none, removed afterwards:

* ``labkit`` — ``labkit --root S/overlay --backend overlay run --rm busybox true``;
* ``labkit-thin`` — the same verb on a ``thin`` store (the CLI verb on thin should cost at most 1.5x
  overlay);
* ``podman`` — ``podman --root S/podman/root --runroot S/podman/runroot --storage-driver overlay run --rm
  --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 --network none IMAGE true``, with a
  private store in the scratch directory (the image is ``podman import``-ed from the same rootfs; the
  store is ``system reset -f`` afterwards);
* ``runc`` — ``runc --root S/runc run --bundle S/bundle ID`` of the same rootfs (create, start, wait,
  delete; :func:`labkit.containers.oci.write_bundle` writes the same profile labkit uses).

One small driver process starts them **in turn**, each round in a rotated order, so every peer sees the
same load (paired runs: take ratios per round, then medians). Round 0 is the warm-up. Nothing is
installed: a peer that is missing or fails has no rows and its reason in ``df.attrs["skipped"]``.

``bytecode=cached`` (default) runs labkit with ``PYTHONPYCACHEPREFIX`` in the scratch directory and
bytecode writing on, as an installed package has its ``.pyc`` files; ``bytecode=none`` keeps the
caller's environment (a checkout run with ``PYTHONDONTWRITEBYTECODE=1`` compiles every module every time).

Columns: ``peer``, ``backend``, ``repeat``, ``seconds``, ``load_1m`` (the load average when the run
ended).

>>> df = framework.run("cli-latency", repeat=10)                                   # doctest: +SKIP
>>> ratios(df)                                                                     # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Any

import pandas as pd

from ..containers import oci
from ..gc import gc
from ..images.busybox import build_busybox_rootfs
from ..snapshots import backend_class
from .framework import Context, Param, experiment

PEERS = ("labkit", "labkit-thin", "podman", "runc")
PODMAN_IMAGE = "localhost/labkit-bench-busybox"
PODMAN_RUN = ["run", "--rm", "--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit",
              "nproc=32768:32768", "--network", "none"]

_DRIVER = r"""
import json, os, subprocess, sys, time
job = json.load(sys.stdin)
names, out, errors = list(job["argv"]), {n: [] for n in job["argv"]}, {}
for r in range(job["rounds"]):
    k = r % len(names)
    for name in names[k:] + names[:k]:
        if name in errors:
            continue
        argv = [a.replace("{i}", str(r)) for a in job["argv"][name]]
        t = time.perf_counter()
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env=job["env"][name])
        dt = time.perf_counter() - t
        if p.returncode:
            lines = p.stderr.decode(errors="replace").strip().splitlines()
            errors[name] = f"exit {p.returncode}: " + (lines[-1] if lines else "no output")
            continue
        with open("/proc/loadavg") as f:
            load = float(f.read().split()[0])
        out[name].append([r, dt, load])
print(json.dumps({"seconds": out, "errors": errors}))
"""


def _labkit_argv() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "labkit")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "labkit.cli"]


def _labkit_env(scratch: str, bytecode: str) -> dict[str, str]:
    env = dict(os.environ)
    if bytecode == "cached":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(scratch, "pycache")
    return env


def _check(argv: list[str], env: dict[str, str] | None = None) -> None:
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    if p.returncode:
        lines = (p.stderr.strip() or p.stdout.strip()).splitlines()
        raise RuntimeError(f"{' '.join(argv[:4])}...: " + (lines[-1] if lines else f"exit {p.returncode}"))


def _runroot(scratch: str) -> str:
    """podman refuses a runroot of more than 50 characters: a short directory under /run then (a link
    in the scratch directory says where, and :func:`cleanup_peers` removes both)."""
    link = os.path.join(scratch, "podman", "runroot")
    if os.path.islink(link):
        return os.readlink(link)
    if len(link) <= 50:
        return link
    os.makedirs(os.path.dirname(link), exist_ok=True)
    short = tempfile.mkdtemp(prefix="lkpod-", dir="/run")
    os.symlink(short, link)
    return short


def _podman(scratch: str) -> list[str]:
    return ["podman", "--root", os.path.join(scratch, "podman", "root"), "--runroot", _runroot(scratch),
            "--storage-driver", "overlay"]


def prepare_peers(scratch: str, peers: list[str], bytecode: str = "cached") -> tuple[dict, dict, dict[str, str]]:
    """Set every peer up in ``scratch``; returns ``(argv, env, skipped)`` keyed by peer name."""
    argv: dict[str, list[str]] = {}
    envs: dict[str, dict[str, str]] = {}
    skipped: dict[str, str] = {}
    rootfs = os.path.join(scratch, "rootfs")
    os.mkdir(rootfs)
    build_busybox_rootfs(rootfs)
    lk, lkenv = _labkit_argv(), _labkit_env(scratch, bytecode)
    for name in peers:
        try:
            if name in ("labkit", "labkit-thin"):
                backend = "thin" if name == "labkit-thin" else "overlay"
                store = os.path.join(scratch, backend)
                why = backend_class(backend).supported(store)
                if why:
                    raise RuntimeError(why)
                base = [*lk, "--root", store, "--backend", backend]
                _check([*base, "image", "import", "busybox"], lkenv)
                argv[name], envs[name] = [*base, "run", "--rm", "busybox", "true"], lkenv
            elif name == "podman":
                if shutil.which("podman") is None:
                    raise RuntimeError("podman not installed (apt-get install podman)")
                tar = os.path.join(scratch, "busybox.tar")
                with tarfile.open(tar, "w") as t:
                    t.add(rootfs, arcname=".")
                _check([*_podman(scratch), "import", tar, PODMAN_IMAGE])
                argv[name], envs[name] = [*_podman(scratch), *PODMAN_RUN, PODMAN_IMAGE, "true"], dict(os.environ)
            elif name == "runc":
                exe = shutil.which("runc")
                if exe is None:
                    raise RuntimeError("runc not installed (apt-get install runc)")
                bundle = os.path.join(scratch, "bundle")
                oci.write_bundle(bundle, rootfs, ["/bin/true"], hostname="bench")
                argv[name] = [exe, "--root", os.path.join(scratch, "runc"), "run", "--bundle", bundle,
                              f"lkcli{os.getpid()}-{{i}}"]
                envs[name] = dict(os.environ)
            else:
                raise RuntimeError("unknown peer")
        except Exception as e:  # noqa: BLE001 - a missing peer must not lose the others
            skipped[name] = str(e)
    return argv, envs, skipped


def cleanup_peers(scratch: str) -> None:
    """Remove what the peers left in ``scratch``: podman's private store, labkit's stores (gc of that
    root only), the directory."""
    if os.path.isdir(os.path.join(scratch, "podman")) and shutil.which("podman"):
        subprocess.run([*_podman(scratch), "system", "reset", "-f"], stdin=subprocess.DEVNULL,
                       capture_output=True)
        link = os.path.join(scratch, "podman", "runroot")
        if os.path.islink(link):
            shutil.rmtree(os.readlink(link), ignore_errors=True)
    for backend in ("overlay", "thin"):
        store = os.path.join(scratch, backend)
        if os.path.isdir(store):
            try:
                gc(store)
            except Exception:  # noqa: BLE001 - best effort; rmtree below reports nothing either
                pass
    shutil.rmtree(scratch, ignore_errors=True)


def measure(scratch: str, peers: list[str], rounds: int, bytecode: str = "cached") -> tuple[list[dict], dict]:
    """Set up, run ``rounds`` rounds (the first a warm-up) and return ``(rows, skipped)``."""
    argv, envs, skipped = prepare_peers(scratch, peers, bytecode)
    if not argv:
        return [], skipped
    job = json.dumps({"argv": argv, "env": envs, "rounds": rounds})
    p = subprocess.run([sys.executable, "-S", "-c", _DRIVER], input=job, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError((p.stderr.strip().splitlines() or ["driver failed"])[-1])
    res = json.loads(p.stdout.strip().splitlines()[-1])
    skipped.update(res["errors"])
    rows = []
    for name, obs in res["seconds"].items():
        if name in res["errors"]:
            continue
        backend = "thin" if name == "labkit-thin" else "overlay" if name == "labkit" else ""
        rows += [{"peer": name, "backend": backend, "repeat": r, "seconds": s, "load_1m": load}
                 for r, s, load in obs]
    return rows, skipped


def ratios(df: pd.DataFrame, base: str = "podman") -> pd.DataFrame:
    """Per peer: median seconds (25 %, 75 %) and the median of the per-round ratio to ``base`` (paired:
    both ran in the same round), warm-up dropped. ``labkit-thin`` is also compared with ``labkit``."""
    d = df[~df.warmup] if "warmup" in df else df[df.repeat > 0]
    wide = d.pivot_table(index="repeat", columns="peer", values="seconds")
    out = d.groupby("peer").seconds.describe()[["count", "25%", "50%", "75%"]]
    out["load_1m"] = d.groupby("peer").load_1m.median()
    for ref in (base, "labkit"):
        if ref in wide:
            rel = wide.div(wide[ref], axis=0)
            out[f"vs_{ref}"] = rel.median()
            out[f"vs_{ref}_25%"] = rel.quantile(0.25)
            out[f"vs_{ref}_75%"] = rel.quantile(0.75)
    skipped = df.attrs.get("skipped") or {}
    if skipped:   # shown in the summary too, so a missing peer is never silent
        out["skipped"] = ""
        for name, why in skipped.items():
            out.loc[name, "skipped"] = why
    return out


@experiment("cli-latency", title="whole `labkit run --rm busybox true` process vs podman run --rm and runc run",
            params=[Param("peers", "choice", list(PEERS), "commands to compare", choices=PEERS, sweep=True),
                    Param("bytecode", "choice", "cached", "labkit's .pyc files: cached (as installed) or none "
                          "(as the caller's environment says)", choices=("cached", "none"))],
            columns={"peer": "labkit, labkit-thin, podman or runc", "backend": "labkit's store backend",
                     "seconds": "whole process, start to exit", "load_1m": "load average after the run"},
            trials_per_case=lambda p: 1, whole_list=("peers",), summary=ratios)
def cli_latency_case(p: dict[str, Any], repeat: int, ctx: Context) -> list[dict[str, Any]]:
    """One case for all peers: each set up in a scratch directory, then ``repeat`` + 1 rounds."""
    scratch = tempfile.mkdtemp(prefix="cli-latency-", dir=ctx.root)
    try:
        peers = p["peers"] if isinstance(p["peers"], list) else [p["peers"]]
        rows, skipped = measure(scratch, peers, max(repeat, 1) + 1, p["bytecode"])
    finally:
        cleanup_peers(scratch)
    ctx.tick(1)
    # a skip row (dropped by the framework, which files its reason under "runtime") per missing peer
    return rows + [{"runtime": name, "repeat": -1, "seconds": float("nan"), "skipped": why}
                   for name, why in skipped.items()]
