"""Experiments: the framework (parameters, grid, executors, save/load) and each built-in on small sizes.

Times are never asserted; space and correctness are.
"""
from __future__ import annotations

import concurrent.futures as cf

import pytest

from labkit import errors
from labkit.experiments import framework, snapshot_time
from labkit.experiments.framework import Param

MiB = 1 << 20


def test_param_conversion_and_errors():
    p = Param("size", "size", "1M", sweep=True)
    assert p.convert("64K") == 65536
    with pytest.raises(errors.InvalidArgument, match="size"):
        p.convert("lots")
    c = Param("backend", "choice", "copy", choices=("copy", "thin"))
    with pytest.raises(errors.InvalidArgument, match="choose from copy, thin"):
        c.convert("zfs")
    n = Param("n", "int", 1, min=1, max=3)
    with pytest.raises(errors.InvalidArgument, match="outside"):
        n.convert(9)


def test_grid_expands_sweeps_and_rejects_unknown():
    exp = framework.get("snapshot-time")
    grid = framework.cases(exp, {"backend": ["copy", "thin"], "size": "1M,2M"})
    assert len(grid) == 4 and {"backend": "copy", "size": MiB} in grid
    with pytest.raises(errors.InvalidArgument, match="its parameters are"):
        framework.cases(exp, {"nope": 1})
    with pytest.raises(errors.NotFound, match="bench --list"):
        framework.get("no-such-experiment")


@pytest.mark.root
def test_snapshot_time_rows_and_save_load(tmp_path):
    df = snapshot_time.run(["copy", "overlay"], ["256K", "1M"], repeat=2, root=str(tmp_path), progress=False)
    assert {"backend", "parent_bytes", "phase", "repeat", "seconds", "kernel", "store_fs", "warmup"} <= set(df.columns)
    assert set(df.phase) == set(snapshot_time.PHASES)
    assert len(df) == 2 * 2 * 3 * len(snapshot_time.PHASES)
    assert (df.seconds > 0).all() and df.warmup.sum() == 2 * 2 * len(snapshot_time.PHASES)
    table = snapshot_time.medians(df)
    assert list(table.index) == ["copy", "overlay"] and list(table.columns) == ["256 KiB", "1 MiB"]
    out = framework.save(df, str(tmp_path / "out" / "st.csv"))
    back = framework.load(out["csv"])
    assert len(back) == len(df) and back.attrs["experiment"] == "snapshot-time"
    assert back.attrs["environment"]["kernel"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("copy-", "overlay-"))]


@pytest.mark.root
def test_cases_run_on_an_executor(tmp_path):
    with cf.ThreadPoolExecutor(2) as ex:
        df = framework.run("commit-cost", repeat=1, root=str(tmp_path), progress=False, executor=ex,
                           backend=["copy", "overlay"], changed="256K", image_size="1M")
    assert sorted(df.backend.unique()) == ["copy", "overlay"]
    assert (df.bytes_added >= 256 << 10).all()


@pytest.mark.root
def test_space_vs_containers_shows_sharing(tmp_path):
    df = framework.run("space-vs-containers", repeat=1, root=str(tmp_path), progress=False,
                       backend=["copy", "thin"], containers=4, write="1M", image_size="8M")
    last = df[~df.warmup & (df.containers == 4)].set_index("backend").bytes_added
    assert last["copy"] >= 4 * 8 * MiB           # every container copies the whole image
    assert last["thin"] < 4 * 3 * MiB            # only what each wrote (plus ext4 metadata)
    assert last["thin"] >= 4 * MiB


@pytest.mark.root
def test_block_size_and_pool_exhaustion(tmp_path):
    df = framework.run("block-size", repeat=1, root=str(tmp_path), progress=False,
                       block_size=["64K", "1M"], image_size="8M", writes=50)
    d = df[~df.warmup].set_index("block_bytes")
    assert d.loc[1 << 20, "bytes_exclusive"] > d.loc[64 << 10, "bytes_exclusive"]  # bigger blocks copy more
    ex = framework.run("pool-exhaustion", repeat=1, root=str(tmp_path), progress=False,
                       pool_size="96M", containers=2, image_size="4M")
    assert ex.image_intact.all() and ex.pool_ok_after.all()
    assert (ex.error != "").all()                # every writer hit the full pool


def test_every_experiment_has_a_plot():
    from labkit.plots import PLOTS
    assert set(framework.names()) <= set(PLOTS)


@pytest.mark.root
def test_plot_of_a_real_run(tmp_path):
    from labkit.plots import plot
    df = framework.run("snapshot-time", repeat=1, root=str(tmp_path), progress=False, backend="copy",
                       size=["256K", "1M"])
    fig = plot(df)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_ylabel().startswith("prepare + mount") and ax.get_lines()
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert ticks and all(t.endswith(("µs", "ms", " s")) for t in ticks), ticks     # times in units people read


@pytest.mark.root
def test_start_latency_compares_runtimes_in_one_case(tmp_path):
    df = framework.run("start-latency", repeat=3, root=str(tmp_path), progress=False, runtimes=["labkit", "runc"])
    measured = df[~df.warmup]
    assert set(measured.runtime) | set(df.attrs["skipped"]) == {"labkit", "runc"}
    assert (measured.groupby("runtime").size() == 3).all()
    assert (measured.seconds > 0).all()


@pytest.mark.root
def test_image_sprawl_chain_keeps_every_version(tmp_path):
    df = framework.run("image-sprawl", repeat=1, root=str(tmp_path), progress=False, backend="overlay",
                       steps=3, write="256K")
    d = df[~df.warmup].set_index("approach")
    assert d.loc["chain", "images"] == 3 and d.loc["once", "images"] == 1
    assert d.loc["chain", "bytes_total"] > 2 * d.loc["once", "bytes_total"]
    assert (d.bytes_freed > 0).all() and d.loc["chain", "deleted"] == 3


def test_start_latency_plot_from_rows():
    import pandas as pd

    from labkit.plots import plot
    df = pd.DataFrame({"runtime": ["labkit", "runc"] * 3, "seconds": [0.02, 0.04] * 3, "warmup": [False] * 6})
    fig = plot(df, "start-latency")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["labkit", "runc"]


def test_registry_is_full_from_the_framework_alone():
    """One module per experiment registers itself; importing the framework (which imports its package)
    is enough for get/names, in a fresh interpreter."""
    import subprocess
    import sys
    code = "from labkit.experiments.framework import names; print(','.join(names()))"
    out = subprocess.run([sys.executable, "-c", code],
                         capture_output=True, text=True, check=True).stdout.strip().split(",")
    assert out == ["snapshot-time", "space-vs-containers", "cow-penalty", "commit-cost", "block-size",
                   "pool-exhaustion", "thin-io", "start-latency", "image-sprawl", "kernel-diff", "minimal-image",
                   "cli-latency", "recipe-vs-hand"]
    import labkit.experiments as pkg
    assert not hasattr(pkg, "save") and not hasattr(pkg, "load")   # framework.save/load are the ones


def test_store_options_come_from_the_backend():
    from labkit.experiments.common import backend_class, store_options
    for name in ("copy", "overlay", "btrfs", "reflink", "thin"):
        assert store_options(name, 1 << 30) == backend_class(name).options_for(1 << 30)
    with pytest.raises(errors.InvalidArgument, match="choose one of"):
        backend_class("zfs")
