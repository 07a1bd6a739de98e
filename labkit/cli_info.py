"""``labkit info`` (what to paste when asking for help) and ``labkit completion bash``.

>>> p = argparse.ArgumentParser(prog="labkit"); sub = p.add_subparsers(dest="command"); register(sub)
>>> sorted(sub.choices)
['completion', 'info']
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

from . import errors
from .config import default_root
from .thin.client import PoolClient
from .version import __version__


def _tool_version(cmd: list[str]) -> str:
    if not shutil.which(cmd[0]):
        return "not installed"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return "installed (no version)"
    return out[0] if out else "installed"


def info(root: str) -> dict[str, Any]:
    """Everything ``labkit info`` prints, as data (``--format json``)."""
    from ._sys.probe import kernel_filesystems
    from .snapshots import backend_status
    statuses = backend_status(root)
    default = next((s.name for s in statuses if s.available), None)
    fs = kernel_filesystems()
    cg = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else (
        "hybrid (v1 controllers + v2 tree)" if os.path.isdir("/sys/fs/cgroup/unified") else "v1")
    out: dict[str, Any] = {
        "labkit": __version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "running_as_root": os.geteuid() == 0,
        "store_root": root,
        "store_exists": os.path.isdir(root),
        "default_backend": default,
        "default_backend_why": ("the first of thin, overlay, btrfs, reflink, copy that runs here"
                                + (f"; LABKIT_BACKEND={os.environ['LABKIT_BACKEND']} overrides it"
                                   if os.environ.get("LABKIT_BACKEND") else "")),
        "backends": {s.name: ("yes" if s.available else f"no: {s.reason}") for s in statuses},
        "kernel_features": {
            "overlay": "overlay" in fs, "btrfs": "btrfs" in fs, "xfs": "xfs" in fs, "fuse": "fuse" in fs,
            "/dev/fuse": os.path.exists("/dev/fuse"),
            "device-mapper": os.path.exists("/dev/mapper/control"),
            "loop-control": os.path.exists("/dev/loop-control"),
            "cgroups": cg,
            "user namespaces": os.path.exists("/proc/self/ns/user"),
        },
        "tools": {name: _tool_version(cmd) for name, cmd in {
            "runc": ["runc", "--version"], "crun": ["crun", "--version"], "podman": ["podman", "--version"],
            "mkfs.btrfs": ["mkfs.btrfs", "--version"], "thin_check": ["thin_check", "--version"],
            "qemu-system-x86_64": ["qemu-system-x86_64", "--version"]}.items()},
    }
    pool = os.path.join(root, "snapshots", "thin", "pool")
    if os.path.exists(os.path.join(pool, "metadata")):
        out["thin_pool"] = _pool_line(pool)
    return out


def _pool_line(pool: str) -> str:
    """The thin pool's status line, asked of its daemon if one runs (never starting one)."""
    client = PoolClient(pool, os.path.join(os.path.dirname(pool), "dev"))
    try:
        if not client.connect(start=False):
            return "no daemon running (the pool is closed; it starts on first use)"
        return str(client.status())
    except errors.LabkitError as e:
        return f"unknown ({e})"
    finally:
        client.close()


def cmd_info(args: argparse.Namespace) -> int:
    """Print :func:`info` as text (or JSON)."""
    data = info(default_root(args.root))
    if args.format == "json":
        from .cli_format import print_json
        print_json(data)
        return 0
    for k, v in data.items():
        if isinstance(v, dict):
            print(f"{k.replace('_', ' ')}:")
            for kk, vv in v.items():
                print(f"  {kk:<20} {vv}")
        else:
            print(f"{k.replace('_', ' ') + ':':<22} {v}")
    return 0


def _words(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """command path ('' for the top) -> the words that may follow it."""
    out: dict[str, list[str]] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        words = [o for a in p._actions for o in a.option_strings if o.startswith("--") or len(o) == 2]
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    words.append(name)
                    walk(sp, f"{path} {name}".strip())
        out[path] = sorted(set(words))
    walk(parser, "")
    return out


def completion_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion function for ``labkit`` made from the parser itself (so it never goes stale)."""
    words = _words(parser)
    cases = "\n".join(f'        "{path}") opts="{" ".join(w)}" ;;' for path, w in sorted(words.items()) if path)
    top = " ".join(words[""])
    return f"""# bash completion for labkit: eval "$(labkit completion bash)" (or save it in /etc/bash_completion.d/)
_labkit() {{
    local cur path w opts
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    path=""
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$w" in -*) ;; *) path="${{path:+$path }}$w" ;; esac
    done
    while :; do
        case "$path" in
{cases}
        "") opts="{top}" ;;
        *) case "$path" in *" "*) path="${{path% *}}" ;; *) path="" ;; esac; continue ;;
        esac
        break
    done
    COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
}}
complete -o default -F _labkit labkit
"""


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the completion script for the parser ``labkit`` was called with."""
    sys.stdout.write(completion_script(args.root_parser))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``info`` and ``completion``."""
    s = sub.add_parser("info", help="root, default backend and why, pool status, kernel features, versions")
    s.add_argument("--format", choices=["text", "json"], default="text")
    s.set_defaults(func=cmd_info)
    s = sub.add_parser("completion", help="print a shell completion script: eval \"$(labkit completion bash)\"")
    s.add_argument("shell", choices=["bash"])
    s.set_defaults(func=cmd_completion)
