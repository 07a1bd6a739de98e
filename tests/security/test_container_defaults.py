"""From inside a default container, what Docker's default profile forbids fails, and the host is unchanged;
``privileged=True`` lifts it. See docs/security.md ("Container defaults")."""
from __future__ import annotations

import os

import pytest

from labkit.containers import capabilities

pytestmark = pytest.mark.root

DOCKER_MASK = "00000000a80425fb"          # CapEff of `docker run` as root


def _probe(rt, rootfs, ops, **kw) -> dict[str, str]:
    """Run ``lkprobe OP [ARG]`` for each op in one container; ``{op: "OK" | errno name}``."""
    script = "; ".join(f"echo {op.split()[0]}=$(lkprobe {op} 2>&1)" for op in ops)
    c = rt.run(rootfs, ["sh", "-c", script], **kw)
    out = dict(line.split("=", 1) for line in c.logs().splitlines() if "=" in line)
    assert set(out) == {op.split()[0] for op in ops}, c.logs()
    return out


def _status(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


def test_status_shows_docker_caps_nnp_and_seccomp(rt, rootfs):
    c = rt.run(rootfs, ["cat", "/proc/self/status"])
    st = _status(c.logs())
    assert (st["CapEff"], st["CapPrm"], st["CapBnd"]) == (DOCKER_MASK,) * 3
    assert (st["CapInh"], st["CapAmb"]) == ("0" * 16,) * 2
    assert (st["NoNewPrivs"], st["Seccomp"]) == ("1", "2")
    assert sorted(capabilities.names(int(DOCKER_MASK, 16))) == sorted(capabilities.DEFAULT)
    # a non-root user gets no capabilities at all, only the bounding set (as execve would give it)
    st = _status(rt.run(rootfs, ["cat", "/proc/self/status"], user="nobody").logs())
    assert (st["CapEff"], st["CapPrm"], st["CapBnd"]) == ("0" * 16, "0" * 16, DOCKER_MASK)


def test_exec_gets_the_same_profile(rt, rootfs):
    c = rt.run(rootfs, ["sleep", "30"], detach=True)
    code, out = c.exec(["cat", "/proc/self/status"])
    st = _status(out)
    assert (st["CapEff"], st["NoNewPrivs"], st["Seccomp"]) == (DOCKER_MASK, "1", "2")
    code, out = c.exec(["lkprobe", "keyctl"])
    assert (code, out) == (1, "EPERM\n")
    c.remove(force=True)


def test_denied_syscalls_fail_with_eperm(rt, rootfs):
    host_pid = os.getpid()
    ops = ["keyctl", "add_key", "unshare_user", "unshare_net", "unshare_mnt", "clone_user", "setns",
           "init_module", "finit_module", "delete_module", "mount", "remount_rw", "umount /proc/sys", "bpf",
           "perf_event_open", "kexec_load", "open_by_handle_at", "clock_settime", "personality", "vsock",
           "io_uring", "userfaultfd", "swapon", "syslog", "pivot_root"]
    out = _probe(rt, rootfs, ops + ["clone3", f"ptrace {host_pid}", "chroot"])
    assert {op.split()[0]: out[op.split()[0]] for op in ops} == {op.split()[0]: "EPERM" for op in ops}
    assert out["clone3"] == "ENOSYS"          # as Docker: libc falls back to clone, whose flags are checked
    assert out["ptrace"] == "ESRCH"           # allowed (Docker, kernel >= 4.8), but the host is not there
    assert out["chroot"] == "OK"              # CAP_SYS_CHROOT is in Docker's set


def test_host_pids_are_not_visible(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", f"ls /proc/{os.getpid()} >/dev/null 2>&1 && echo visible || echo hidden"])
    assert c.logs() == "hidden\n"


def test_proc_sys_and_sysrq_are_read_only_and_paths_masked(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", ("echo 3 > /proc/sys/vm/drop_caches; echo rc=$?; "
                                     "echo h > /proc/sysrq-trigger; echo rc=$?; "
                                     "echo 1 > /proc/sys/kernel/ns_last_pid; echo rc=$?; "
                                     "ls /sys/firmware | wc -l; cat /proc/keys | wc -c; touch /sys/x; echo rc=$?")])
    lines = c.logs().splitlines()
    assert lines.count("rc=1") == 4, lines
    sysrq = os.path.exists("/proc/sysrq-trigger")      # absent on kernels without CONFIG_MAGIC_SYSRQ
    assert sum("Read-only file system" in ln for ln in lines) == 3 + sysrq, lines
    assert "0" in lines                       # masked: /sys/firmware empty, /proc/keys reads nothing


def test_mknod_is_allowed_but_the_device_cannot_be_opened(rt, rootfs):
    st = os.stat("/")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)      # the host's root filesystem device
    c = rt.run(rootfs, ["sh", "-c", (f"mknod /tmp/lkdisk b {major} {minor} && echo made; "
                                     f"head -c 512 /tmp/lkdisk | wc -c; "
                                     f"mknod /dev/lkdisk b {major} {minor} && echo made; lkprobe open /dev/lkdisk; "
                                     "rm -f /tmp/lkdisk")])
    lines = c.logs().splitlines()
    assert lines[0] == "made" and lines[-1] in ("EPERM", "EACCES"), lines
    assert "Permission denied" in c.logs() or "Operation not permitted" in c.logs()
    assert lines.count("0") == 1              # nothing was read from the disk


def test_readonly_root_cannot_be_remounted_rw(rt, rootfs, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    out = _probe(rt, rootfs, ["remount_rw /", "remount_rw /vol", "mount"], readonly=True, binds=[f"{vol}:/vol:ro"])
    assert out == {"remount_rw": "EPERM", "mount": "EPERM"}
    c = rt.run(rootfs, ["sh", "-c", "touch /x; touch /vol/x; grep -E ' / | /vol ' /proc/mounts | cut -d' ' -f4"],
               readonly=True, binds=[f"{vol}:/vol:ro"])
    assert c.logs().count("Read-only file system") == 2
    assert [o.split(",")[0] for o in c.logs().splitlines()[-2:]] == ["ro", "ro"]
    assert not (vol / "x").exists() and not os.path.exists(os.path.join(rootfs, "x"))


def test_readonly_is_recursive_for_submounts_of_a_bind(rt, rootfs, tmp_path):
    """A ``:ro`` bind of a directory that has a mount below it: the submount is read-only too."""
    from labkit._sys import mounts as m
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    m.mount("tmpfs", str(vol / "sub"), "tmpfs", 0, "size=1m")
    try:
        c = rt.run(rootfs, ["sh", "-c", "touch /vol/sub/x; echo rc=$?"], binds=[f"{vol}:/vol:ro"])
        assert "rc=1" in c.logs() and "Read-only" in c.logs(), c.logs()
        assert not (vol / "sub" / "x").exists()
    finally:
        m.umount(str(vol / "sub"))


def test_privileged_lifts_everything(rt, rootfs):
    with open("/proc/self/status") as f:
        host = _status(f.read())
    c = rt.run(rootfs, ["cat", "/proc/self/status", "/proc/mounts"], privileged=True)
    st = _status(c.logs())
    assert st["CapEff"] == host["CapBnd"] and st["CapBnd"] == host["CapBnd"]
    assert (st["NoNewPrivs"], st["Seccomp"]) == ("0", "0")
    assert "/proc/sys" not in [ln.split()[1] for ln in c.logs().splitlines() if ln.startswith("proc ")]
    out = _probe(rt, rootfs, ["keyctl", "init_module", "unshare_user"], privileged=True)
    assert out["keyctl"] == "OK" and out["unshare_user"] == "OK"
    # no filter, no capability check: the kernel itself answers (ENOEXEC for the bogus image, or ENOSYS
    # on a kernel built without module support, as the lab VM's)
    assert out["init_module"] in ("ENOEXEC", "ENOSYS")


def test_cap_add_and_cap_drop(rt, rootfs):
    st = _status(rt.run(rootfs, ["cat", "/proc/self/status"], cap_drop=["ALL"]).logs())
    assert st["CapEff"] == "0" * 16 and st["Seccomp"] == "2"
    st = _status(rt.run(rootfs, ["cat", "/proc/self/status"], cap_drop=["net_raw"], cap_add=["CAP_SYS_PTRACE"]).logs())
    assert capabilities.names(int(st["CapEff"], 16)) == sorted(
        (capabilities.DEFAULT - {"CAP_NET_RAW"}) | {"CAP_SYS_PTRACE"}, key=capabilities.NUMBER.get)
    # SYS_ADMIN also opens the seccomp rules that Docker ties to it: mount works, keyctl still does not
    out = _probe(rt, rootfs, ["mount", "keyctl", "unshare_mnt"], cap_add=["SYS_ADMIN"])
    assert out == {"mount": "OK", "keyctl": "EPERM", "unshare_mnt": "OK"}
    from labkit import errors
    with pytest.raises(errors.InvalidArgument, match="capability 'NOPE'"):
        rt.run(rootfs, ["true"], cap_add=["NOPE"])


def test_busybox_insmod_is_refused(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", ("head -c 4096 /dev/zero > /tmp/dummy.ko; insmod /tmp/dummy.ko; echo rc=$?; "
                                     "rm /tmp/dummy.ko")])
    assert "rc=1" in c.logs() and "Operation not permitted" in c.logs(), c.logs()


def test_rlimits(rt, rootfs):
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
    c = rt.run(rootfs, ["sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c"])
    assert c.logs().split() == [str(want), str(want), "0"]
