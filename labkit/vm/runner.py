"""Boot Debian's kernel in a qemu VM (through virtme-ng) and run one command in it.

The guest sees the host's root filesystem read-only over 9p, so the checkout and its venv are there
as they are on the host; one host directory (``scratch``, made for the run unless given) is mounted
read-write at the same path. A small script written into ``scratch`` runs first in the guest: it prints
a marker (``labkit-vm: guest up``), starts a watchdog that powers the guest off after the timeout even if
the host side is gone, stops udevd (it probes every new device; ``DM_DISABLE_UDEV=1`` makes a dmsetup run
by hand manage ``/dev/mapper`` itself; labkit's own calls, :mod:`labkit._sys.dm`, always do), loads ``loop``
and ``dm_thin_pool``, mounts an ext4 at :data:`GUEST_TMP` for pools and stores (on a sparse file in a
tmpfs: memory-backed, with user xattrs), exports ``LABKIT_VM=1``, ``LABKIT_VM_SCRATCH``, ``LABKIT_VM_TMP``
and ``PYTHONPATH`` (the checkout), enters the checkout and runs the command; its exit status comes back
through ``scratch/.labkit-vm/rc``.

Every exit path (normal end, timeout, a hang before the marker, an exception, Ctrl-C) kills the whole
process group that ``vng`` and its ``qemu-system-*`` run in, so no VM outlives the call. The group is led by
a small watcher process (:data:`_WATCHER`, the parent of ``vng``; ``vng`` → ``sh`` → ``virtme-run`` →
``qemu``): the kernel signals it when the calling process dies however it dies (``PR_SET_PDEATHSIG``, which
only reaches a direct child, hence the watcher), and it then kills its group — so not even a SIGKILLed
pytest leaves a qemu behind. Groups still running at interpreter exit are killed too (``atexit``).

Accelerators: ``tcg`` (the default: emulation, slow but it boots everywhere), ``kvm`` (fails with a
clear error when the guest does not reach the marker within ``boot_timeout``: nested KVM hangs on some
hosts), ``auto`` (tries KVM once, remembers a hang in ``/run/labkit/vm-accel`` and falls back to TCG).
Times measured in a TCG guest are not representative; space and content are exact.

>>> r = VM().run("uname -r")                       # doctest: +SKIP
>>> r.returncode, r.output.splitlines()[-1]        # doctest: +SKIP
(0, '6.1.0-56-amd64')
"""
from __future__ import annotations

import atexit
import glob
import os
import platform
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .. import errors

__all__ = ["VM", "VMResult", "Requirements", "requirements", "find_kernel", "kill_running", "GUEST_TMP", "MARKER"]

#: ext4 mounted in the guest for pools, stores and pytest's temp dirs (memory-backed, gone at poweroff)
GUEST_TMP = "/run/labkit-vm"
#: the first line the guest prints: the boot is over
MARKER = "labkit-vm: guest up"
_ACCEL_CACHE = "/run/labkit/vm-accel"
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_OUTPUT_CAP = 4 << 20


@dataclass(frozen=True)
class Requirements:
    """What the host has for running the VM: paths found, and one line per missing piece (with the fix)."""

    qemu: str | None
    kernel: str | None
    vng: str | None
    missing: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.missing


def _modules_have_thin(release: str) -> bool:
    pats = [f"/lib/modules/{release}/kernel/drivers/md/dm-thin-pool.ko*"]
    if glob.glob(pats[0]):
        return True
    try:  # built in
        with open(f"/lib/modules/{release}/modules.builtin") as f:
            return "dm-thin-pool.ko" in f.read()
    except OSError:
        return False


def find_kernel(kernel: str | None = None) -> str | None:
    """The kernel image to boot: ``kernel``, else ``$LABKIT_VM_KERNEL``, else the newest
    ``/boot/vmlinuz-*`` whose modules include dm-thin-pool (None if there is none).

    >>> find_kernel("/nonexistent/vmlinuz") is None
    True
    """
    want = kernel or os.environ.get("LABKIT_VM_KERNEL")
    if want:
        return want if os.path.isfile(want) else None
    found = []
    for path in glob.glob("/boot/vmlinuz-*"):
        release = os.path.basename(path).removeprefix("vmlinuz-")
        if _modules_have_thin(release):
            found.append((os.path.getmtime(path), path))
    return max(found)[1] if found else None


def _find_vng() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "vng")
    return shutil.which("vng") or (beside if os.access(beside, os.X_OK) else None)


def requirements(kernel: str | None = None) -> Requirements:
    """Look for qemu, a kernel image with dm-thin and virtme-ng; each missing one gets its install command.

    >>> isinstance(requirements().ok, bool)
    True
    """
    arch = platform.machine() or "x86_64"
    qemu = shutil.which(f"qemu-system-{arch}")
    kimg = find_kernel(kernel)
    vng = _find_vng()
    missing = []
    if qemu is None:
        missing.append(f"qemu-system-{arch} is missing: apt-get install qemu-system-x86")
    if kimg is None:
        missing.append(f"no kernel image with dm_thin_pool ({kernel or '/boot/vmlinuz-*'}): "
                       "apt-get install linux-image-amd64")
    if vng is None:
        missing.append(f"virtme-ng (vng) is missing: {sys.executable} -m pip install virtme-ng")
    for tool, pkg in (("thin_ls", "thin-provisioning-tools"),):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            missing.append(f"{tool} is missing (the guest uses the host's tools): apt-get install {pkg}")
    return Requirements(qemu, kimg, vng, tuple(missing))


@dataclass
class VMResult:
    """What a run gave: the command's exit status (None when it never ran to the end), the combined
    output of the guest (stdout and stderr, capped at 4 MiB), wall seconds, seconds until the guest was
    up, the accelerator used and the scratch directory."""

    returncode: int | None
    output: str
    seconds: float
    boot_seconds: float | None
    accel: str
    scratch: str
    kernel: str = ""
    lines: list[str] = field(default_factory=list, repr=False)


def _guest_script(command: str, scratch: str, timeout: float, tmp_size: str) -> str:
    state = os.path.join(scratch, ".labkit-vm")
    venv_bin = os.path.dirname(sys.executable)
    q = shlex.quote
    return f"""#!/bin/sh
# written by labkit.vm: runs first in the guest
echo "{MARKER} $(uname -r)"
( sleep {int(timeout) + 15}; echo watchdog > {shlex.quote(os.path.join(state, "watchdog"))};
  echo o > /proc/sysrq-trigger ) >/dev/null 2>&1 </dev/null &
export PATH={q(venv_bin)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# udevd probes every new loop and dm device (blkid) with a dozen workers: stop it, and tell libdevmapper
# (dmsetup) to make its /dev/mapper nodes itself instead of waiting for udev
udevadm control --exit >/dev/null 2>&1; rm -f /run/udev/control
export DM_DISABLE_UDEV=1
modprobe -q loop 2>/dev/null; modprobe -q dm_thin_pool 2>/dev/null
# scratch space: ext4 (tmpfs has no user.* xattrs before Linux 6.6) on a sparse file in memory; discard
# gives memory back when files go
mkdir -p {GUEST_TMP}-mem {GUEST_TMP} && mount -t tmpfs -o size={tmp_size},mode=0700 labkit-vm-mem {GUEST_TMP}-mem &&
  truncate -s {tmp_size} {GUEST_TMP}-mem/fs.img &&
  mkfs.ext4 -q -F -O ^has_journal -E lazy_itable_init=1,nodiscard {GUEST_TMP}-mem/fs.img &&
  mount -o loop,discard {GUEST_TMP}-mem/fs.img {GUEST_TMP} && chmod 0700 {GUEST_TMP} ||
  echo "labkit-vm: could not make the scratch filesystem at {GUEST_TMP}" >&2
export LABKIT_VM=1 LABKIT_VM_SCRATCH={q(scratch)} LABKIT_VM_TMP={GUEST_TMP} TMPDIR={GUEST_TMP}
export PYTHONPATH={q(_CHECKOUT)}${{PYTHONPATH:+:$PYTHONPATH}} PYTHONDONTWRITEBYTECODE=1
cd {q(_CHECKOUT)}
( {command}
)
rc=$?
echo $rc > {q(os.path.join(state, "rc"))}
sync
exit $rc
"""


#: where virtme-ng mounts a fresh tmpfs in the guest, hiding the host's files
_GUEST_TMPFS = ("/run", "/var/tmp", "/var/log", "/var/cache", "/var/lib/private", "/var/lib/apt", "/dev")


def _hidden_in_guest(path: str) -> bool:
    """True when the guest would not see the host's ``path`` (virtme-ng puts a tmpfs over it).

    >>> _hidden_in_guest("/var/tmp/co/labkit"), _hidden_in_guest("/work/main"), _hidden_in_guest("/varx")
    (True, False, False)
    """
    path = os.path.abspath(path)
    return any(path == t or path.startswith(t + "/") for t in _GUEST_TMPFS)


def _read_cache() -> str | None:
    try:
        with open(_ACCEL_CACHE) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _write_cache(value: str) -> None:
    try:
        os.makedirs(os.path.dirname(_ACCEL_CACHE), exist_ok=True)
        with open(_ACCEL_CACHE, "w") as f:
            f.write(value + "\n")
    except OSError:
        pass


#: run as ``python -S -c _WATCHER PARENT_PID ARGV...``: the parent of vng and the leader of the VM's process
#: group. It asks the kernel for SIGUSR1 when its parent dies (PR_SET_PDEATHSIG), then runs ARGV and
#: waits; on SIGUSR1 it SIGKILLs its whole group (vng, virtme-run, qemu and itself). A SIGTERM from the
#: runner's own group kill ends it as it ends the others. Its exit status is the command's.
_WATCHER = r"""
import ctypes, os, signal, sys
def die(*_):
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGUSR1, die)
if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGUSR1), 0, 0, 0) != 0:   # PR_SET_PDEATHSIG
    sys.exit("labkit-vm: prctl(PR_SET_PDEATHSIG) failed: %s" % os.strerror(ctypes.get_errno()))
if os.getppid() != int(sys.argv[1]):   # the parent died before prctl
    die()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
while True:
    try:
        _, status = os.waitpid(pid, 0)
        break
    except InterruptedError:
        continue
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""

#: process groups of VMs running now (their watchers' pids) -> the pid of the process that started them;
#: killed at interpreter exit — by that process only: a forked child inherits the table (and atexit
#: callbacks), and must not kill its parent's VMs when it ends
_LIVE: dict[int, int] = {}


@atexit.register
def kill_running() -> None:
    """Kill every VM this process is running now (each VM's whole process group: watcher, vng, qemu); the
    :meth:`VM.run` waiting on one then ends with an error. Also done at interpreter exit, by the process
    that started them only (a forked child inherits the table and this callback).

    Not run as a doctest: it would end any VM this interpreter runs (a test suite runs one beside its tests).

    >>> kill_running()          # doctest: +SKIP
    """
    me = os.getpid()
    for pgid, owner in list(_LIVE.items()):
        if owner != me:
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _LIVE.pop(pgid, None)


class VM:
    """A recipe for a VM: kernel, memory, CPUs, accelerator, timeouts; :meth:`run` boots one per call.

    ``timeout`` bounds the whole run (seconds), ``boot_timeout`` the time until the guest prints its
    marker (a guest that does not get there has hung: KVM on nested hosts). ``tmp_size`` is the size
    limit of the guest's tmpfs at :data:`GUEST_TMP` (memory is used only as it fills).

    >>> VM(accel="xen")
    Traceback (most recent call last):
    labkit.errors.InvalidArgument: VM accel 'xen': is not tcg, kvm or auto: ...
    """

    def __init__(self, *, kernel: str | None = None, memory: str = "2G", cpus: int = 2, accel: str | None = None,
                 timeout: float = 1800.0, boot_timeout: float | None = None, tmp_size: str = "8G") -> None:
        accel = accel or os.environ.get("LABKIT_VM_ACCEL") or "tcg"
        if accel not in ("tcg", "kvm", "auto"):
            raise errors.InvalidArgument(f"VM accel {accel!r}", "is not tcg, kvm or auto",
                                         fix="use accel='tcg' (always works) or 'auto'")
        if not re.fullmatch(r"[0-9]+[KMGT]?", str(memory)) or not re.fullmatch(r"[0-9]+[KMGT]?", str(tmp_size)):
            raise errors.InvalidArgument(f"VM memory {memory!r} / tmp_size {tmp_size!r}", "is not a size like 2G")
        if not 1 <= int(cpus) <= 64:
            raise errors.InvalidArgument(f"VM cpus {cpus!r}", "is outside 1..64")
        self.kernel = kernel
        self.memory = str(memory)
        self.cpus = int(cpus)
        self.accel = accel
        self.timeout = float(timeout)
        self.boot_timeout = boot_timeout
        self.tmp_size = str(tmp_size)

    def requirements(self) -> Requirements:
        """See :func:`requirements`."""
        return requirements(self.kernel)

    def require(self) -> Requirements:
        """The requirements, or :class:`~labkit.errors.Unsupported` naming the first missing piece."""
        req = self.requirements()
        if not req.ok:
            raise errors.Unsupported("labkit vm", req.missing[0])
        return req

    def command(self, req: Requirements, scratch: str, accel: str, rwdirs: Sequence[str] = ()) -> list[str]:
        """The ``vng`` command line for a run (for logs and for the curious)."""
        cmd = [req.vng or "vng", "-r", req.kernel or "", "--user", "root", "--force-9p",
               "--cpus", str(self.cpus), "--memory", self.memory, "--rwdir", scratch]
        for d in rwdirs:
            cmd += ["--rwdir", d]
        venv = os.path.dirname(os.path.dirname(sys.executable))
        for d in dict.fromkeys((_CHECKOUT, venv)):   # a checkout or venv under /var/tmp: mount it read-only
            if _hidden_in_guest(d):
                cmd += ["--rodir", d]
        if accel == "tcg":
            cmd.append("--disable-kvm")
        return cmd + ["--", f"exec /bin/sh {shlex.quote(os.path.join(scratch, '.labkit-vm', 'run.sh'))}"]

    def run(self, command: str | Sequence[str], *, scratch: str | None = None, rwdirs: Sequence[str] = (),
            on_output: Callable[[str], None] | None = None, timeout: float | None = None) -> VMResult:
        """Boot, run ``command`` (a shell string, or an argv list that is quoted for the shell) in the
        checkout with the environment described in the module docstring, power off.

        ``scratch`` is a host directory mounted read-write at the same path in the guest (default: a new
        ``/var/tmp/labkit-vm-*`` directory, removed afterwards). Every
        output line goes to ``on_output`` as it arrives (default: this process's stdout). Raises
        :class:`~labkit.errors.Unsupported` when qemu, the kernel or virtme-ng is missing and
        :class:`~labkit.errors.FailedPrecondition` on a timeout or a hang (the VM is killed first).
        """
        req = self.require()
        if not isinstance(command, str):
            command = shlex.join(command)
        if scratch is None:
            own = tempfile.mkdtemp(prefix="labkit-vm-", dir="/var/tmp")
            try:
                res = self.run(command, scratch=own, rwdirs=rwdirs, on_output=on_output, timeout=timeout)
            finally:
                shutil.rmtree(own, ignore_errors=True)
            res.scratch = ""
            return res
        scratch = os.path.abspath(scratch)
        for d in (scratch, *rwdirs):
            if not os.path.isdir(d):
                raise errors.NotFound(f"VM directory {d!r}", fix="create it first")
        accel = self.accel
        if accel == "auto":
            accel = "tcg" if (_read_cache() == "tcg" or not os.path.exists("/dev/kvm")) else "kvm"
        try:
            return self._run_once(req, command, scratch, rwdirs, accel, on_output, timeout)
        except _Hang as hang:
            if self.accel != "auto" or accel != "kvm":
                raise errors.FailedPrecondition(f"VM with {accel.upper()}", str(hang),
                                                fix="use accel='tcg' (LABKIT_VM_ACCEL=tcg)") from None
            _write_cache("tcg")
            (on_output or _print)(f"labkit-vm: {hang}; KVM remembered as broken here, retrying with TCG")
            return self._run_once(req, command, scratch, rwdirs, "tcg", on_output, timeout)

    def _run_once(self, req: Requirements, command: str, scratch: str, rwdirs: Sequence[str], accel: str,
                  on_output: Callable[[str], None] | None, timeout: float | None) -> VMResult:
        timeout = self.timeout if timeout is None else float(timeout)
        boot_timeout = self.boot_timeout or (120.0 if accel == "kvm" else min(timeout, 600.0))
        state = os.path.join(scratch, ".labkit-vm")
        os.makedirs(state, exist_ok=True)
        rc_file = os.path.join(state, "rc")
        if os.path.exists(rc_file):
            os.unlink(rc_file)
        with open(os.path.join(state, "run.sh"), "w") as f:
            f.write(_guest_script(command, scratch, timeout, self.tmp_size))
        out = on_output or _print
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(req.vng or "") + os.pathsep + env.get("PATH", "/usr/bin:/bin")
        argv = self.command(req, scratch, accel, rwdirs)
        start = time.monotonic()
        watcher = [sys.executable, "-S", "-c", _WATCHER, str(os.getpid())]
        proc = subprocess.Popen(watcher + argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=_CHECKOUT)
        _LIVE[proc.pid] = os.getpid()
        lines: list[str] = []
        size = 0
        boot: float | None = None
        buf = b""
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while True:
                now = time.monotonic()
                if boot is None and now - start > boot_timeout:
                    raise _Hang(f"the guest did not come up within {boot_timeout:.0f} s (hung at boot)")
                if now - start > timeout:
                    raise errors.FailedPrecondition(f"VM command {command[:80]!r}",
                                                    f"did not finish within {timeout:.0f} s; the VM was killed",
                                                    fix="give a larger timeout (labkit vm run --timeout S)")
                ready, _, _ = select.select([fd], [], [], 1.0)
                if not ready:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    if boot is None and MARKER in line:
                        boot = time.monotonic() - start
                    if size < _OUTPUT_CAP:
                        lines.append(line)
                        size += len(line) + 1
                    out(line)
            if buf:
                lines.append(buf.decode("utf-8", "replace"))
                out(lines[-1])
            _wait_exit(proc, 30.0)
        finally:
            _kill_group(proc)
            _LIVE.pop(proc.pid, None)
        rc: int | None = None
        try:
            with open(rc_file) as f:
                rc = int(f.read().strip())
        except (OSError, ValueError):
            rc = None
        if boot is None and rc is None:
            tail = " | ".join(lines[-3:]) or "no output"
            raise errors.FailedPrecondition("VM", f"ended before the guest came up ({tail})",
                                            fix="run `labkit vm check` to see the boot")
        return VMResult(rc, "\n".join(lines), time.monotonic() - start, boot, accel, scratch,
                        req.kernel or "", lines)


class _Hang(Exception):
    pass


def _print(line: str) -> None:
    print(line, flush=True)


def _wait_exit(proc: subprocess.Popen, seconds: float) -> None:
    """Wait for the watcher (vng's parent) to exit without reaping it (so its pid, the group id, cannot be
    reused meanwhile)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is not None:
            return
        time.sleep(0.1)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the VM's process group (the watcher, vng, virtme-run, qemu) while its leader is unreaped, then
    reap the leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and _group_alive(proc.pid):
                time.sleep(0.1)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    if proc.stdout is not None:
        proc.stdout.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # a group whose only member is the unreaped watcher zombie is as good as gone
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
