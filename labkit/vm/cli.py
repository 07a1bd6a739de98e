"""``labkit vm run [options] -- CMD...`` and ``labkit vm check``: the kernel's dm-thin in a qemu VM.

The main CLI calls :func:`register` with its subparsers object; each command sets ``func(args) -> int``.

>>> import argparse
>>> p = argparse.ArgumentParser(); register(p.add_subparsers())
>>> a = p.parse_args(["vm", "run", "--timeout", "60", "--", "uname", "-r"]); a.vm_command, a.cmd[-2:]
('run', ['uname', '-r'])
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile

from ..errors import InvalidArgument
from .batch import run_jobs
from .runner import VM, requirements

__all__ = ["register"]


def _vm(args: argparse.Namespace) -> VM:
    return VM(kernel=args.kernel, memory=args.memory, cpus=args.cpus, accel=args.accel, timeout=args.timeout)


def _terminate_on_sigterm() -> None:
    """SIGTERM becomes SystemExit, so the VM's process group is killed on the way out."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def cmd_run(args: argparse.Namespace) -> int:
    """Boot, run CMD in the checkout (scratch dir shared read-write), print its output as it comes."""
    cmd = list(args.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        raise InvalidArgument("labkit vm run", "needs a command", fix="write e.g. labkit vm run -- uname -r")
    _terminate_on_sigterm()
    vm = _vm(args)
    scratch = os.path.abspath(args.scratch) if args.scratch else tempfile.mkdtemp(prefix="labkit-vm-", dir="/var/tmp")
    try:
        res = vm.run(cmd[0] if len(cmd) == 1 else cmd, scratch=scratch)
    finally:
        if not args.scratch and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    boot = f"{res.boot_seconds:.1f}" if res.boot_seconds is not None else "?"
    print(f"labkit vm: exit {res.returncode}, {res.seconds:.1f} s (boot {boot} s, {res.accel})", file=sys.stderr)
    return 255 if res.returncode is None else res.returncode


def cmd_check(args: argparse.Namespace) -> int:
    """Say what is missing, or boot once and print the guest's kernel and dm-thin target versions."""
    req = requirements(args.kernel)
    for line in req.missing:
        print(f"missing: {line}")
    if not req.ok:
        return 1
    print(f"qemu:   {req.qemu}\nkernel: {req.kernel}\nvng:    {req.vng}")
    _terminate_on_sigterm()
    quiet = (lambda line: None) if not args.verbose else None
    batch = run_jobs([{"name": "info", "job": "kernel_info"}], vm=_vm(args), on_output=quiet)
    try:
        info = batch.require("info")
    finally:
        shutil.rmtree(batch.scratch, ignore_errors=True)
    t = info["targets"]
    print(f"guest kernel {info['kernel']}: thin-pool {t.get('thin-pool', 'missing')}, thin {t.get('thin', 'missing')}"
          f"; thin-provisioning-tools {info['thin_provisioning_tools']}")
    boot = f"{batch.vm.boot_seconds:.1f}" if batch.vm.boot_seconds is not None else "?"
    print(f"boot {boot} s, total {batch.vm.seconds:.1f} s ({batch.vm.accel}; times under TCG are not representative)")
    return 0 if "thin-pool" in t else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``vm run`` and ``vm check`` to the main parser's subcommands."""
    p = sub.add_parser("vm", help="run commands in a qemu VM whose kernel has dm-thin (labkit vm check)")
    vsub = p.add_subparsers(dest="vm_command", metavar="VERB", required=True)

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--kernel", help="kernel image (default $LABKIT_VM_KERNEL, else the newest /boot/vmlinuz-* "
                                        "with dm_thin_pool)")
        s.add_argument("--memory", default="2G", help="guest memory (default 2G)")
        s.add_argument("--cpus", type=int, default=2, help="guest CPUs (default 2)")
        s.add_argument("--accel", choices=("tcg", "kvm", "auto"), default=None,
                       help="tcg (default, $LABKIT_VM_ACCEL), kvm, or auto (KVM unless it hangs)")
        s.add_argument("--timeout", type=float, default=1800.0, help="seconds before the VM is killed (1800)")

    s = vsub.add_parser("run", help="boot and run CMD in the checkout; exit with its status")
    common(s)
    s.add_argument("--scratch", help="host directory shared read-write (default: a temporary one)")
    s.add_argument("--keep", action="store_true", help="keep the temporary scratch directory")
    s.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...] (one argument: a shell command line)")
    s.set_defaults(func=cmd_run)

    s = vsub.add_parser("check", help="boot once; print the guest kernel and its dm-thin target versions")
    common(s)
    s.add_argument("--verbose", action="store_true", help="show the guest's output")
    s.set_defaults(func=cmd_check)
