"""Sweeps beyond one process: ``labkit.experiments.executors`` (specs, lifetimes, errors) and
``framework.run`` on a real Dask cluster — rows in the local run's shape, each with the worker's host, a
failing case reported while the others are kept, and no process left when the block ends.

The case function of the test-only experiment lives at this module's top level, so that worker processes
(spawned with this process's ``sys.path``) import it by reference; it is registered only for the tests that
use it, so the registry stays the built-ins' elsewhere.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from labkit import errors
from labkit.experiments import framework
from labkit.experiments.executors import open_executor, parse_spec
from labkit.experiments.host import worker_id

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

FLAKY = "labkit-test-flaky"


def flaky_case(p: dict[str, Any], repeat: int, ctx: framework.Context) -> list[dict[str, Any]]:
    """x=2 fails; the others write a file in their scratch root and give one row per repetition."""
    if p["x"] == 2:
        raise errors.FailedPrecondition("case x=2", "fails on purpose")
    with open(os.path.join(ctx.root, f"x{p['x']}"), "w") as f:
        f.write("scratch")
    return [{"repeat": r, "value": p["x"] * 10, "pid": os.getpid(), "root": ctx.root} for r in range(repeat + 1)]


def slow_case(p: dict[str, Any], repeat: int, ctx: framework.Context) -> list[dict[str, Any]]:
    """Marks its start, takes ``p["seconds"]``, marks its end (as a case removes its scratch store)."""
    open(os.path.join(p["marks"], "started"), "w").close()
    time.sleep(p["seconds"])
    open(os.path.join(p["marks"], "finished"), "w").close()
    return [{"repeat": 0}]


@pytest.fixture
def flaky() -> Iterator[str]:
    framework.experiment(FLAKY, title="fails for x=2",
                         params=[framework.Param("x", "int", 1, sweep=True)])(flaky_case)
    try:
        yield FLAKY
    finally:
        del framework.REGISTRY[FLAKY]


def _children() -> set[int]:
    """This process's descendants, without multiprocessing's resource tracker (one per process that ever
    spawned, kept until exit: it is not a worker)."""
    out = set()
    for c in psutil.Process().children(recursive=True):
        try:
            if "multiprocessing.resource_tracker" not in " ".join(c.cmdline()):
                out.add(c.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _gone(pids: set[int], timeout: float = 5.0) -> set[int]:
    """Those of ``pids`` still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = {p for p in pids if psutil.pid_exists(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
    return alive


@pytest.mark.parametrize("spec, want", [
    (None, ("local", None, None)), ("local", ("local", None, None)), ("thread:3", ("thread", 3, None)),
    ("process", ("process", None, None)), ("dask", ("dask", None, None)), ("dask:4", ("dask", 4, None)),
    ("dask:tcp://10.0.0.5:8786", ("dask", None, "tcp://10.0.0.5:8786")),
    ("dask:tls://[::1]:8786", ("dask", None, "tls://[::1]:8786")),
    ("dask:sched.lan:8786", ("dask", None, "sched.lan:8786")),
])
def test_specs_parse(spec, want):
    s = parse_spec(spec)
    assert (s.kind, s.workers, s.address) == want


@pytest.mark.parametrize("spec", ["foo", "local:2", "thread:0", "process:x", "dask:999", "dask:tcp://h",
                                  "dask:http://h:1", "dask:tcp://h:1/$(id)"])
def test_bad_specs_are_one_line_errors(spec):
    with pytest.raises(errors.InvalidArgument, match="executor") as e:
        with open_executor(spec):
            pass
    assert "\n" not in str(e.value)


def test_missing_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)   # `import distributed` fails as if not installed
    with pytest.raises(errors.Unsupported, match=r"pip install 'labkit\[dask\]'"):
        with open_executor("dask"):
            pass


def test_unreachable_and_silent_schedulers_fail_fast():
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed_port = free.getsockname()[1]
    with socket.socket() as silent:   # accepts (in the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        for port in (closed_port, silent.getsockname()[1]):
            t0 = time.monotonic()
            with pytest.raises(errors.NotFound, match="did not answer within 1 s: start one with `dask scheduler`"):
                with open_executor(f"dask:tcp://127.0.0.1:{port}", connect_timeout=1):
                    pass
            assert time.monotonic() - t0 < 5


def test_failures_are_kept_per_case_in_this_process(tmp_path, flaky):
    df = framework.run(flaky, repeat=1, root=str(tmp_path), progress=False, x=[1, 2, 3])
    assert sorted(df.x.unique()) == [1, 3]
    assert df.attrs["failed"] == {"x=2": "case x=2: fails on purpose"}
    assert set(df.worker) == {worker_id()} and (df.root == str(tmp_path)).all()
    back = framework.load(framework.save(df, str(tmp_path / "out" / "flaky.csv"))["csv"])
    assert back.attrs["failed"] == df.attrs["failed"] and list(back.attrs["workers"]) == [worker_id()]
    with pytest.raises(errors.FailedPrecondition, match="fails on purpose"):   # every case failed: its error is raised
        framework.run(flaky, repeat=1, root=str(tmp_path), progress=False, x=2)


def test_process_pool_runs_cases_in_their_own_dirs(tmp_path, flaky):
    before = _children()
    with open_executor("process:2") as ex:
        df = framework.run(flaky, repeat=1, root=str(tmp_path), progress=False, executor=ex, x=[1, 2, 3])
        pool = _children() - before
    assert _gone(pool) == set()
    assert sorted(df.x.unique()) == [1, 3] and list(df.attrs["failed"]) == ["x=2"]
    for row in df.itertuples():
        assert row.worker.endswith(f":{row.pid}") and row.pid != os.getpid()
        assert os.path.dirname(row.root) == str(tmp_path) and row.root.endswith(f"-{row.pid}")


@pytest.mark.root
@pytest.mark.slow
def test_sweep_on_a_local_dask_cluster(tmp_path, flaky):
    """snapshot-time on copy and overlay, in this process and on 2 Dask worker processes: the same columns,
    each row with its worker's host; a failing case of another experiment is reported and the rest kept;
    after the block no worker, nanny or scheduler process is left."""
    local = framework.run("snapshot-time", repeat=1, root=str(tmp_path / "local"), progress=False,
                          backend=["copy", "overlay"], size="256K")
    before = _children()
    with open_executor("dask:2") as ex:
        assert len(ex._client.scheduler_info()["workers"]) == 2
        assert ex._client.scheduler.address.startswith("tls://127.0.0.1:")   # loopback, mutual TLS
        df = framework.run("snapshot-time", repeat=1, root=str(tmp_path / "dask"), progress=False, executor=ex,
                           backend=["copy", "overlay"], size="256K")
        part = framework.run(flaky, repeat=1, root=str(tmp_path / "flaky"), progress=False, executor=ex,
                             x=[1, 2, 3])
        with pytest.raises(errors.FailedPrecondition, match="fails on purpose"):   # the worker's error, same type
            framework.run(flaky, repeat=1, root=str(tmp_path / "flaky"), progress=False, executor=ex, x=2)
        cluster = _children() - before
        assert len(cluster) >= 2
    assert _gone(cluster) == set(), "dask processes left after the block"

    assert list(df.columns) == list(local.columns)
    assert {"hostname", "worker", "kernel", "cpu_model", "store_fs"} <= set(df.columns)
    assert len(df) == len(local) and sorted(df.backend.unique()) == ["copy", "overlay"]
    assert df.groupby("backend").size().tolist() == [12, 12]             # 2 repetitions x 6 phases each
    assert not set(df.worker) & {worker_id()}                          # not run here...
    assert set(df.worker) <= set(df.attrs["workers"])                  # ...but where attrs say
    assert (df.hostname == local.hostname.iloc[0]).all()
    assert list((tmp_path / "dask").iterdir()) == []                # scratch stores and worker dirs removed
    assert df.attrs["failed"] == {}

    assert sorted(part.x.unique()) == [1, 3]
    assert part.attrs["failed"] == {"x=2": "case x=2: fails on purpose"}
    for row in part.itertuples():                                   # each in its worker's own dir, kept
        assert row.root == str(tmp_path / "flaky" / row.worker.replace(":", "-"))   # as it is not empty
        assert os.path.exists(os.path.join(row.root, f"x{row.x}"))


def test_a_running_scheduler_by_address(tmp_path, flaky):
    """``dask:ADDRESS`` connects to a scheduler someone else runs (here a TLS cluster on loopback, its
    credentials in Dask's configuration as they would be on a real client) and leaves it running."""
    import dask
    sec = distributed.Security.temporary()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, security=sec) as cluster:
        creds = {"distributed.comm.tls.ca-file": sec.tls_ca_file,
                 "distributed.comm.tls.client.cert": sec.tls_client_cert,
                 "distributed.comm.tls.client.key": sec.tls_client_key}
        with dask.config.set(creds):
            with open_executor(f"dask:{cluster.scheduler_address}") as ex:
                df = framework.run(flaky, repeat=1, root=str(tmp_path), progress=False, executor=ex, x=[1, 3])
        assert sorted(df.x.unique()) == [1, 3] and df.attrs["failed"] == {}
        with distributed.Client(cluster, timeout=5) as c:               # ours closed; the cluster runs on
            assert len(c.scheduler_info()["workers"]) == 1
        with pytest.raises(errors.FailedPrecondition, match="did not answer as a Dask scheduler"):
            with open_executor(f"dask:{cluster.scheduler_address}"):   # no credentials: refused
                pass


@pytest.mark.slow
def test_interrupt_lets_running_cases_end_then_stops_the_cluster(tmp_path, caplog):
    """^C (KeyboardInterrupt in the sweep's process) while a case runs on the local cluster: the case runs to
    its end on its worker (which ignores ^C) before the cluster is closed; then no process is left. (The case
    outlasts the 4 s a closing cluster gives a busy worker before killing it.)"""
    from labkit.experiments import executors
    before = _children()
    with pytest.raises(KeyboardInterrupt):
        with open_executor("dask:1") as ex:
            fut = ex.submit(framework._run_case, slow_case, {"marks": str(tmp_path), "seconds": 5}, 0,
                            str(tmp_path / "scratch"))
            deadline = time.monotonic() + 20
            while not (tmp_path / "started").exists():
                assert time.monotonic() < deadline, "the case never started"
                time.sleep(0.05)
            cluster = _children() - before
            fut.cancel()
            raise KeyboardInterrupt
    assert (tmp_path / "finished").exists()
    assert executors._WAITING in caplog.text
    assert _gone(cluster) == set()


@pytest.mark.root
def test_cli_runs_cases_on_an_executor_and_refuses_a_bad_spec(tmp_path):
    """`labkit bench NAME --executor SPEC`: the same CSV as a local run; a bad spec is a one-line error."""
    import subprocess
    cli = [sys.executable, "-m", "labkit.cli", "--root", str(tmp_path / "root")]
    out = tmp_path / "st.csv"
    p = subprocess.run([*cli, "bench", "snapshot-time", "--backend", "copy,overlay", "--sizes", "256K",
                        "--repeat", "1", "--quiet", "--executor", "process:2", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    import pandas as pd
    df = pd.read_csv(out)
    assert set(df["backend"]) == {"copy", "overlay"} and "worker" in df.columns
    bad = subprocess.run([*cli, "bench", "snapshot-time", "--executor", "cluster"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "executor" in bad.stderr and "Traceback" not in bad.stderr
