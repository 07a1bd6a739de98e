"""The column's figure-2 workflow typed at a shell, on the default backend (thin) against overlay.

Every `labkit run` without --rm and every `labkit commit` on thin once stalled 10 s (the snapshotter's
close waited on a pool daemon that still served the container's device). This is a regression guard with
a generous bound — thin may cost at most 3x overlay per cycle — not a benchmark (`labkit bench
cli-latency` measures).
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]


def labkit(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"labkit {' '.join(args)}: {r.stderr}"
    return r


def cycle(R: list[str], i: int) -> float:
    t = time.monotonic()
    labkit("run", "--name", f"b{i}", "busybox", *R, "--", "sh", "-c", f"echo {i} > /v")
    labkit("commit", f"b{i}", f"app:v{i}", *R)
    labkit("rm", f"b{i}", *R)
    out = labkit("run", "--rm", f"app:v{i}", *R, "--", "cat", "/v").stdout
    took = time.monotonic() - t
    assert out == f"{i}\n"
    return took


def test_figure_2_from_the_shell_thin_vs_overlay(tmp_path):
    times = {}
    for backend in ("overlay", "thin"):
        R = ["--root", str(tmp_path / backend), "--backend", backend]
        labkit("image", "import", "busybox", *R)
        cycle(R, 0)                                   # warm-up: the pool daemon, page cache
        times[backend] = min(cycle(R, i) for i in (1, 2))
        labkit("gc", *R)
    print(f"figure-2 cycle: overlay {times['overlay']:.2f} s, thin {times['thin']:.2f} s")
    assert times["thin"] < 3 * times["overlay"] + 0.5, times
