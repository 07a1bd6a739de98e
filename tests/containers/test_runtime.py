"""The runtime end to end on a busybox rootfs: isolation, limits, lifecycle, errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from labkit import errors
from labkit.containers.security import MASKED_PATHS, READONLY_PATHS

pytestmark = pytest.mark.root


def test_output_and_exit_code(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert c.exit_code == 3 and c.signal is None
    assert c.logs() == "out\nerr\n"
    assert c.status == "exited"
    assert [p["status"] for p in rt.ps()] == ["exited"]


def test_hostname_and_pid1(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", "echo $$; hostname; cat /etc/hostname"], name="box1")
    pid1, host, _ = c.logs().splitlines()
    assert (pid1, host) == ("1", "box1")
    c2 = rt.run(rootfs, ["hostname"], name="other", hostname="custom")
    assert c2.logs() == "custom\n"


def test_proc_shows_only_the_container(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", "ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '"])
    pids = [int(p) for p in c.logs().split()]
    assert pids[0] == 1 and max(pids) < 10, pids     # sh, ls, grep, sort, tr: nothing of the host


def test_pivot_root_hides_host_and_dev(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", ("ls /dev | tr '\\n' ' '; echo; cat /proc/mounts | cut -d' ' -f2 | tr '\\n' ' '; "
                                     "echo; echo x > /dev/null && head -c 4 /dev/zero | wc -c; ls /dev/pts")])
    devs, mnts, zero, *_ = c.logs().splitlines()
    nodes = {"null", "zero", "full", "random", "urandom", "tty"}
    assert nodes | {"pts", "shm", "fd", "ptmx"} <= set(devs.split())
    # the device nodes are bind mounts of the host's; masked and read-only paths are mounts too
    profile = {p for p in MASKED_PATHS + READONLY_PATHS if os.path.exists(p)}
    assert set(mnts.split()) == ({"/", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm"}
                                 | {f"/dev/{n}" for n in nodes} | profile)
    assert zero.strip() == "4"
    assert not os.path.exists(os.path.join(rootfs, "work"))


def test_readonly_root(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", ("touch /tmp/x 2>&1; echo rc=$?; touch /dev/shm/ok && echo shm-ok; "
                                     "grep ' / ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1")], readonly=True)
    lines = c.logs().splitlines()
    assert "Read-only file system" in lines[0] and lines[1] == "rc=1"
    assert lines[2:] == ["shm-ok", "ro"]
    assert not os.path.exists(os.path.join(rootfs, "tmp", "x"))


def test_env_workdir_user(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", "echo $GREETING; pwd; id -u; id -g; echo $HOME"], env={"GREETING": "hi"},
               workdir="/var/www", user="nobody")
    assert c.logs().splitlines() == ["hi", "/var/www", "65534", "65534", "/nonexistent"]
    c = rt.run(rootfs, ["sh", "-c", "id -u; id -g"], user="1000:1001")
    assert c.logs().split() == ["1000", "1001"]


def test_binds_and_stdin(rt, rootfs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from host\n")
    out = tmp_path / "out"
    out.mkdir()
    c = rt.run(rootfs, ["sh", "-c", "cat /data/in.txt; touch /data/no 2>/dev/null || echo ro; cat > /out/got"],
               binds=[f"{data}:/data:ro", (str(out), "/out")], stdin=b"piped\n")
    assert c.logs() == "from host\nro\n"
    assert (out / "got").read_text() == "piped\n"


def test_exec_sees_container_pid_namespace(rt, rootfs):
    c = rt.run(rootfs, ["sleep", "30"], name="ex", detach=True)
    assert c.running
    code, out = c.exec(["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; echo $$"])
    first, host, mypid = out.splitlines()
    assert code == 0 and first.strip() == "sleep 30" and host == "ex" and int(mypid) > 1
    code, out = c.exec(["sh", "-c", "exit 7"])
    assert code == 7
    code, out = c.exec(["id", "-u"], user="nobody")
    assert out == "65534\n"
    assert c.exec(["cat"], stdin=b"abc")[1] == "abc"
    # the exec'd process ran in the container's cgroup
    code, out = c.exec(["cat", "/proc/self/cgroup"])
    assert f"labkit/{c.id}" in out
    with pytest.raises(errors.InvalidArgument):
        c.exec(["/no/such/tool"])
    c.stop(timeout=0.2)
    with pytest.raises(errors.FailedPrecondition):
        c.exec(["true"])


def test_memory_limit_oom_kills(rt, rootfs):
    c = rt.run(rootfs, ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"], memory=16 << 20)
    assert (c.exit_code, c.signal) == (137, signal.SIGKILL)
    st = c.stats()
    assert st["memory_limit_bytes"] == 16 << 20 and st["memory_peak_bytes"] <= 16 << 20
    assert st["oom_kills"] == 1


def test_pids_limit_refuses_forks(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 0.3 & done; wait; echo done"], pids=4)
    assert "can't fork: Resource temporarily unavailable" in c.logs(), c.logs()
    assert "done" not in c.logs() and c.exit_code != 0


def test_cpu_limit_and_stats_while_running(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", "while :; do :; done"], cpus=0.2, memory=32 << 20, pids=16, detach=True)
    time.sleep(0.5)
    st = c.stats()
    assert st["status"] == "running" and st["pids"] == 1 and st["memory_bytes"] > 0
    assert 0 < st["cpu_usage_ns"] < 0.5e9          # at most ~0.2 CPU for 0.5 s (+ slack)
    cgroup = c.cgroup
    if cgroup.version == 1:
        with open(cgroup.path("cpu") + "/cpu.cfs_quota_us") as f:
            assert int(f.read()) == 20000
    c.freeze()
    assert c.stats()["frozen"]
    used = c.stats()["cpu_usage_ns"]
    time.sleep(0.3)
    assert c.stats()["cpu_usage_ns"] == used      # frozen: no CPU at all
    c.thaw()
    assert not c.stats()["frozen"]
    with c.paused():
        assert c.cgroup.frozen()
    assert not c.cgroup.frozen()
    c.stop(timeout=0.3)                              # sh as PID 1 has no TERM handler: SIGKILL
    assert c.exit_code == 137


def test_stop_ignoring_sigterm_respects_timeout(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"], detach=True)
    t = time.monotonic()
    assert c.stop(timeout=1) == 137
    assert 0.9 < time.monotonic() - t < 1.6
    # a PID 1 with a TERM handler exits at once
    c2 = rt.run(rootfs, ["sh", "-c", "trap 'exit 5' TERM; while :; do sleep 0.05; done"], detach=True)
    time.sleep(0.1)
    t = time.monotonic()
    assert c2.stop(timeout=5) == 5 and time.monotonic() - t < 1


def test_wait_timeout_and_remove_running(rt, rootfs):
    c = rt.run(rootfs, ["sleep", "30"], detach=True)
    with pytest.raises(TimeoutError):
        c.wait(0.1)
    with pytest.raises(errors.FailedPrecondition):
        c.remove()
    c.remove(force=True)
    assert rt.ps() == []


def test_none_network_has_only_loopback(rt, rootfs):
    c = rt.run(rootfs, ["sh", "-c", ("ls /sys/class/net; ip -o link | grep -c UP; "
                                     "ping -c1 -W1 127.0.0.1 >/dev/null && echo lo-ok")])
    assert c.logs().split() == ["lo", "1", "lo-ok"]


def test_host_network_sees_host_interfaces(rt, rootfs):
    c = rt.run(rootfs, ["ls", "/sys/class/net"], network="host")
    assert set(c.logs().split()) == set(os.listdir("/sys/class/net"))


def test_bridge_two_containers_talk(rt, rootfs):
    forward = open("/proc/sys/net/ipv4/ip_forward").read()
    web = rt.run(rootfs, ["httpd", "-f", "-p", "8080", "-h", "/var/www"], name="web", network="bridge", detach=True)
    assert web.ip.startswith("10.88.") and web.ip != "10.88.0.1"
    script = (f"for i in $(seq 50); do wget -q -O- http://{web.ip}:8080/ && exit 0; sleep 0.05; done; exit 1")
    client = rt.run(rootfs, ["sh", "-c", script + "; ip route"], name="client", network="bridge")
    assert client.exit_code == 0, client.logs()
    assert client.logs() == "hello from labkit\n"
    assert client.ip != web.ip
    c = rt.run(rootfs, ["sh", "-c", "ip -o -4 addr show eth0; ip route | head -1"], network="bridge")
    addr, route = c.logs().splitlines()
    assert c.ip + "/16" in addr and route.startswith("default via 10.88.0.1")
    # the host reaches the container over the bridge too
    import socket
    for attempt in range(5):
        try:
            with socket.create_connection((web.ip, 8080), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
            break
        except OSError:
            if attempt == 4:
                raise
            time.sleep(0.2)
    assert reply.endswith(b"hello from labkit\n")
    web.stop(timeout=1)
    assert not os.path.exists(f"/sys/class/net/lk-{web.id}-h")
    assert open("/proc/sys/net/ipv4/ip_forward").read() == forward      # no NAT unless asked for


def test_failed_setup_leaves_nothing(rt, rootfs):
    with pytest.raises(errors.InvalidArgument, match="cannot exec"):
        rt.run(rootfs, ["/no/such/binary"], network="bridge", memory=32 << 20)
    with pytest.raises(errors.FailedPrecondition, match="workdir"):
        rt.run(rootfs, ["true"], workdir="/does/not/exist")
    with pytest.raises(errors.NotFound):
        rt.run(rootfs + "/nope", ["true"])
    with pytest.raises(errors.InvalidArgument):
        rt.run(rootfs, ["true"], network="overlay")
    with pytest.raises(errors.NotFound):
        rt.run(rootfs, ["true"], user="nosuchuser")
    assert rt.ps() == []
    rt.run(rootfs, ["true"], name="dup")
    with pytest.raises(errors.AlreadyExists):
        rt.run(rootfs, ["true"], name="dup")


def test_detached_container_outlives_its_process(rt, rootfs):
    code = ("import sys; from labkit.containers import Runtime; "
            "rt = Runtime(sys.argv[1]); rt.run(sys.argv[2], ['sleep', '30'], name='bg', detach=True)")
    subprocess.run([sys.executable, "-c", code, rt.state_dir, rootfs], check=True, timeout=30)
    c = rt.get("bg")
    assert c.running and rt.ps()[0]["status"] == "running"
    assert c.exec(["hostname"]) == (0, "bg\n")
    assert c.stop(timeout=0.5) == 137
    c.remove()


def test_killed_spawner_and_shim_are_collected_by_gc(rt, rootfs, tmp_path, leftovers):
    import importlib
    importlib.import_module("labkit.containers.gc")   # registers the collector
    from labkit import gc
    c = rt.run(rootfs, ["sleep", "30"], network="bridge", memory=32 << 20, detach=True)
    os.kill(rt._spawner.pid, signal.SIGKILL)
    os.kill(c.state.shim, signal.SIGKILL)
    time.sleep(0.05)
    assert c.running                                  # PID 1 lives on, nobody waits for it
    assert gc.find_leftovers(str(tmp_path / "elsewhere")) == []
    kinds = {lo.kind for lo in gc.find_leftovers(str(tmp_path))}
    assert {"cgroup", "veth", "address"} <= kinds
    done = gc.gc(str(tmp_path))
    assert any(d.startswith(f"cgroup labkit/{c.id}") for d in done)
    assert not c.running
    assert leftovers() == []
    # the runtime restarts its spawner on demand
    assert rt.run(rootfs, ["true"]).exit_code == 0


def test_exited_but_not_removed_is_a_leftover_only_when_not_running(rt, rootfs, tmp_path):
    import importlib
    importlib.import_module("labkit.containers.gc")
    from labkit import gc
    c = rt.run(rootfs, ["sleep", "30"], detach=True)
    assert gc.find_leftovers(str(tmp_path)) == []          # running normally: not a leftover
    c.kill()
    c.wait(5)
    assert c.exit_code == 137
    assert {lo.kind for lo in gc.find_leftovers(str(tmp_path))} == {"cgroup", "record"}
    gc.gc(str(tmp_path))
    c.remove()


def _status_field(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key + ":"))


def test_containers_are_forked_by_the_small_spawner(rt, rootfs):
    c = rt.run(rootfs, ["sleep", "30"], detach=True)
    shim = c.state.shim
    assert int(_status_field(c.pid, "PPid")) == shim            # PID 1's parent is its shim...
    assert int(_status_field(shim, "PPid")) == rt._spawner.pid  # ...forked by the spawner, not by us
    assert rt._spawner.pid != os.getpid()
    rss_kib = int(_status_field(rt._spawner.pid, "VmRSS").split()[0])
    assert rss_kib < 40_000, f"spawner RSS {rss_kib} KiB: it must stay small to fork fast"
    c.remove(force=True)
