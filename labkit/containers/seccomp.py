"""The container's seccomp filter: Docker's default profile, as data, compiled with libseccomp.

Like moby's ``profiles/seccomp/default.json`` the filter is an **allowlist**: a syscall not named
below fails with ``EPERM`` (so does every syscall added to Linux after this list was written, until
it is reviewed). Rules that depend on the container's capabilities (Docker's ``includes.caps`` /
``excludes.caps``) follow the set given with ``cap_add``/``cap_drop``: ``cap_add=["SYS_ADMIN"]`` lets
``mount`` through, exactly as in Docker. ``privileged=True`` installs no filter at all.

Notable denials (EPERM unless the capability in the last column was added):

=====================================================================  =======================  ==================
syscalls                                                               why                      allowed with
=====================================================================  =======================  ==================
mount umount2 umount fsopen fsconfig fsmount fspick move_mount         would undo the masked    CAP_SYS_ADMIN
open_tree mount_setattr pivot_root*                                    and read-only paths
unshare setns; clone with a CLONE_NEW* flag; clone3 (ENOSYS: libc      new namespaces,          CAP_SYS_ADMIN
falls back to clone, whose flags a filter can see)                     user namespaces above all
keyctl add_key request_key                                             the kernel keyring is    (never)
                                                                       not namespaced
init_module finit_module delete_module create_module query_module      kernel modules           CAP_SYS_MODULE
get_kernel_syms
kexec_load kexec_file_load reboot                                      replace/stop the host    CAP_SYS_BOOT
bpf perf_event_open                                                    kernel introspection     CAP_SYS_ADMIN,
                                                                                                CAP_BPF / PERFMON
open_by_handle_at                                                      bypasses the mount       CAP_DAC_READ_SEARCH
                                                                       (the "shocker" escape)
name_to_handle_at lookup_dcookie quotactl quotactl_fd syslog           host information         CAP_SYS_ADMIN
sethostname setdomainname                                              (UTS is namespaced, but  CAP_SYS_ADMIN
                                                                       Docker keeps them off)
settimeofday stime clock_settime clock_settime64                       the host's clock         CAP_SYS_TIME
swapon swapoff acct                                                    host-wide state          (never) / PACCT
iopl ioperm                                                            raw port I/O             CAP_SYS_RAWIO
kcmp pidfd_getfd process_madvise                                       other processes          CAP_SYS_PTRACE
userfaultfd                                                            exploit helper           (never)
io_uring_setup io_uring_enter io_uring_register                        large attack surface     (never; Docker
                                                                                                dropped it in v25)
personality other than 0, 0x8, 0x20000, 0x20008, 0xffffffff           e.g. ADDR_NO_RANDOMIZE   (never)
socket(AF_VSOCK)                                                       host <-> VM channel      (never)
nfsservctl uselib vm86 vm86old sysfs _sysctl ustat vhangup             obsolete or host-wide    (never) / TTY_CONFIG
mbind set_mempolicy get_mempolicy move_pages migrate_pages             NUMA of the host         CAP_SYS_NICE
=====================================================================  =======================  ==================

(* pivot_root is not in Docker's list at all; neither is it here.)

Decisions where Docker depends on the kernel: **ptrace**, ``process_vm_readv`` and
``process_vm_writev`` are allowed, as Docker does on Linux >= 4.8 (since 4.8 a tracer cannot skip the
seccomp check of its tracee). A container's process can trace only its own kind: other processes in
its PID namespace with the same uid and no more capabilities; the host's processes are not even
visible. ``adjtimex`` and ``clock_adjtime`` are allowed as in Docker: reading the clock's state is
harmless and changing it needs CAP_SYS_TIME, which the container does not have.

The filter is compiled once per capability set in the caller's process (libseccomp via
``pyseccomp``) into a classic-BPF program that travels as bytes to the container's init, which loads
it with seccomp(2) right before exec (:mod:`labkit.containers._setup`); the spawner never imports
libseccomp. On x86_64 the 32-bit and x32 ABIs are filtered too (as Docker's ``archMap`` does).

>>> "keyctl" in allowed_names(frozenset())
False
>>> "mount" in allowed_names(frozenset({"CAP_SYS_ADMIN"})), "mount" in allowed_names(frozenset())
(True, False)
>>> len(compile_bpf(frozenset())) % 8                    # doctest: +SKIP
0
"""
from __future__ import annotations

import errno
import functools
import os
from typing import Any, NamedTuple

from labkit import errors

_sc: Any = None   # pyseccomp, loaded on the first compile: importing it runs ldconfig (15-30 ms) and the
             # filter is usually cached on disk already; the spawner (python -S) never compiles filters


def _load() -> bool:
    """Import pyseccomp once; False when it (or libseccomp2) is missing."""
    global _sc
    if _sc is None:
        try:
            import pyseccomp
        except (ImportError, OSError):
            return False
        _sc = pyseccomp
    return True


class Rule(NamedTuple):
    """One rule of the profile: ``names`` get ``action`` (``allow`` or ``errno:<NAME>``), when the
    container has every capability in ``caps`` and none in ``not_caps``; ``args`` are argument checks
    ``(index, op, a, b)`` with ``op`` one of ``eq``, ``ne``, ``masked_eq`` (``arg & a == b``)."""

    names: tuple[str, ...]
    action: str = "allow"
    caps: frozenset[str] = frozenset()
    not_caps: frozenset[str] = frozenset()
    args: tuple[tuple[int, str, int, int], ...] = ()

    def applies(self, caps: frozenset[str]) -> bool:
        return self.caps <= caps and not (self.not_caps & caps)


def _n(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: Every flag that makes a namespace (CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET).
CLONE_NAMESPACES = 0x7E020000
_SYS_ADMIN = frozenset({"CAP_SYS_ADMIN"})

#: moby profiles/seccomp/default.json, in its order: what any container may call
ALLOWED = _n("""
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old
eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate
fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat getcpu getcwd
getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer
getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid
getresuid32 getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid
gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set
io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown
lchown32 lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat
lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat
mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd
msync munlock munlockall munmap nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64
preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages
removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl
semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid
setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit
set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 setxattr shmat shmctl
shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice
stat stat64 statfs statfs64 statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork
vmsplice wait4 waitid waitpid write writev
""")

#: the rest of the profile: conditional rules, in Docker's order
RULES: tuple[Rule, ...] = (
    Rule(ALLOWED),
    Rule(_n("process_vm_readv process_vm_writev ptrace")),              # Docker: minKernel 4.8
    Rule(("socket",), args=((0, "ne", 40, 0),)),                        # not AF_VSOCK
    *(Rule(("personality",), args=((0, "eq", v, 0),)) for v in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)),
    Rule(_n("arch_prctl modify_ldt")),                                  # x86 only: unknown names are skipped
    Rule(_n("bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount "
            "mount_setattr move_mount name_to_handle_at open_tree perf_event_open quotactl quotactl_fd "
            "setdomainname sethostname setns syslog umount umount2 unshare"), caps=_SYS_ADMIN),
    Rule(("clone",), not_caps=_SYS_ADMIN, args=((0, "masked_eq", CLONE_NAMESPACES, 0),)),
    Rule(("clone3",), action="errno:ENOSYS", not_caps=_SYS_ADMIN),
    Rule(("reboot",), caps=frozenset({"CAP_SYS_BOOT"})),
    Rule(("chroot",), caps=frozenset({"CAP_SYS_CHROOT"})),
    Rule(_n("delete_module init_module finit_module"), caps=frozenset({"CAP_SYS_MODULE"})),
    Rule(("acct",), caps=frozenset({"CAP_SYS_PACCT"})),
    Rule(_n("kcmp pidfd_getfd process_madvise"), caps=frozenset({"CAP_SYS_PTRACE"})),
    Rule(_n("iopl ioperm"), caps=frozenset({"CAP_SYS_RAWIO"})),
    Rule(_n("settimeofday stime clock_settime clock_settime64"), caps=frozenset({"CAP_SYS_TIME"})),
    Rule(("vhangup",), caps=frozenset({"CAP_SYS_TTY_CONFIG"})),
    Rule(_n("get_mempolicy mbind set_mempolicy set_mempolicy_home_node"), caps=frozenset({"CAP_SYS_NICE"})),
    Rule(("syslog",), caps=frozenset({"CAP_SYSLOG"})),
    Rule(("bpf",), caps=frozenset({"CAP_BPF"})),
    Rule(("perf_event_open",), caps=frozenset({"CAP_PERFMON"})),
    Rule(("open_by_handle_at",), caps=frozenset({"CAP_DAC_READ_SEARCH"})),
)

#: syscalls that no capability set unlocks (the test suite checks they are in no rule)
NEVER = _n("keyctl add_key request_key userfaultfd kexec_load kexec_file_load swapon swapoff nfsservctl "
           "create_module query_module get_kernel_syms uselib vm86 vm86old sysfs _sysctl ustat "
           "io_uring_setup io_uring_enter io_uring_register pivot_root")


def rules_for(caps: frozenset[str]) -> list[Rule]:
    """The rules that apply to a container holding ``caps`` (a syscall allowed unconditionally by one
    rule is dropped from the conditional rules, so libseccomp never sees two actions for one call)."""
    rules = [r for r in RULES if r.applies(caps)]
    plain = {n for r in rules if not r.args and r.action == "allow" for n in r.names}
    out = []
    for r in rules:
        if r.args or r.action != "allow":
            names = tuple(n for n in r.names if n not in plain)
            if names:
                out.append(Rule(names, r.action, r.caps, r.not_caps, r.args))
        else:
            out.append(r)
    return out


def allowed_names(caps: frozenset[str]) -> set[str]:
    """Syscalls some rule lets through for ``caps`` (unconditionally or with argument checks)."""
    return {n for r in rules_for(caps) if r.action == "allow" for n in r.names}


def _action(text: str) -> int:
    if text == "allow":
        return _sc.ALLOW
    kind, _, name = text.partition(":")
    assert kind == "errno", text
    return _sc.ERRNO(getattr(errno, name))


def _arches() -> list[int]:
    """Docker's archMap: on x86_64 also the 32-bit and x32 ABIs, so their syscalls are filtered too."""
    machine = os.uname().machine         # what platform.machine() says, without importing platform
    if machine == "x86_64":
        return [_sc.Arch.X86, _sc.Arch.X32]
    if machine in ("aarch64", "arm64"):
        return [_sc.Arch.ARM]
    return []


@functools.lru_cache(maxsize=32)
def compile_bpf(caps: frozenset[str]) -> bytes:
    """The filter for a container holding ``caps``, as a classic-BPF program (``struct sock_filter``
    array) ready for seccomp(2). Names this libseccomp does not know on an architecture are skipped
    (:func:`skipped` lists them)."""
    if not _load():
        raise errors.Unsupported("seccomp filter", "needs pyseccomp (and libseccomp2)",
                                 fix="pip install pyseccomp; apt-get install libseccomp2")
    f = _sc.SyscallFilter(_sc.ERRNO(errno.EPERM))
    for arch in _arches():
        try:
            f.add_arch(arch)
        except OSError:
            pass
    ops = {"eq": _sc.EQ, "ne": _sc.NE, "masked_eq": _sc.MASKED_EQ}
    missing: set[str] = set()
    for rule in rules_for(caps):
        args = [_sc.Arg(i, ops[op], a, b) for i, op, a, b in rule.args]
        for name in rule.names:
            try:
                f.add_rule(_action(rule.action), name, *args)
            except (OSError, ValueError):
                missing.add(name)
    _SKIPPED.update(missing)
    import tempfile
    with tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        return tmp.read()


_SKIPPED: set[str] = set()


def skipped() -> list[str]:
    """Syscall names of the profile that libseccomp could not resolve here (too new for it, or of
    another architecture); they stay denied."""
    return sorted(_SKIPPED)
