"""Figures and tables people read, checked on synthetic results of every experiment (no root, no measuring):
sizes ticked at the measured sizes with binary labels as they were asked for, times with units, legends beside
the data, nothing overlapping, one representation per figure; report tables in human units; findings in
sentences with their numbers; the report's sections, a failed experiment included."""
from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from labkit import plots
from labkit.experiments import findings, report

HOST = {"kernel": "6.1", "labkit_version": "0", "cpu_model": "cpu", "store_fs": "ext4"}
BACKENDS = ["copy", "overlay", "btrfs", "reflink", "thin"]
MiB = 1 << 20


def _rows(rows: list[dict], name: str, **params) -> pd.DataFrame:
    df = pd.DataFrame([{**params, **r, **HOST} for r in rows])
    df["warmup"] = df["repeat"] == 0
    df.attrs["experiment"] = name
    return df


def snapshot_time() -> pd.DataFrame:
    rows = []
    for b, size, r, phase in itertools.product(BACKENDS, [16 * MiB, 256 * MiB, 1 << 30], range(4),
                                               ["prepare", "mount", "commit"]):
        grow = size / (16 * MiB) if b == "copy" else 1.0
        rows.append({"backend": b, "parent_bytes": size, "files": 10, "phase": phase, "repeat": r,
                     "seconds": 0.004 * grow * (1 + 0.05 * r)})
    return _rows(rows, "snapshot-time")


def space() -> pd.DataFrame:
    rows = [{"backend": b, "containers": n, "repeat": r, "bytes_used": 0, "bytes_exclusive": 0,
             "bytes_added": n * (4 * MiB + (64 * MiB if b == "copy" else 0))}
            for b, n, r in itertools.product(BACKENDS, range(9), range(2))]
    return _rows(rows, "space-vs-containers", write=4 * MiB, image_size=64 * MiB)


def cow() -> pd.DataFrame:
    rows = [{"backend": b, "phase": ph, "write_bytes": w, "repeat": r,
             "seconds": (0.3 if b == "overlay" and ph == "first_write" else 0.002) * (1 + w / MiB)}
            for b, ph, w, r in itertools.product(BACKENDS, ["first_write", "rewrite"], [4096, 65536, MiB], range(3))]
    return _rows(rows, "cow-penalty", file_size=256 * MiB)


def commit() -> pd.DataFrame:
    rows = [{"backend": b, "changed_bytes": c, "repeat": r, "seconds": 0.001 + c / 1e10, "bytes_added": c * 1.05}
            for b, c, r in itertools.product(BACKENDS, [MiB, 16 * MiB, 128 * MiB], range(3))]
    return _rows(rows, "commit-cost", image_size=64 * MiB)


def block() -> pd.DataFrame:
    rows = [{"block_bytes": bs, "repeat": r, "seconds_per_write": 2e-5 * bs / 65536, "bytes_exclusive": 50 * bs,
             "metadata_blocks": int(8 + 2e6 / bs), "data_blocks": 100, "bytes_used": 100 * bs}
            for bs, r in itertools.product([65536, 512 << 10, MiB], range(3))]
    return _rows(rows, "block-size", writes=50, image_size=64 * MiB)


def pool() -> pd.DataFrame:
    rows = [{"container": c, "repeat": r, "bytes_written": 30 * MiB, "error": "No space left on device",
             "image_intact": True, "pool_used_bytes": 96 * MiB, "overcommit": 53.3, "pool_ok_after": True}
            for c, r in itertools.product(range(3), range(2))]
    return _rows(rows, "pool-exhaustion", pool_size=96 * MiB, containers=3, image_size=4 * MiB)


def thin_io() -> pd.DataFrame:
    rows = [{"target": t, "op": op, "repeat": r, "bytes": 32 * MiB, "seconds": 0.1, "mib_per_s": v}
            for (t, v), op, r in itertools.product([("thin", 200.0), ("loop", 600.0)],
                                                    ["seq_write", "seq_read", "rand_write_4k"], range(3))]
    return _rows(rows, "thin-io")


def start() -> pd.DataFrame:
    rows = [{"runtime": rt, "repeat": r, "seconds": s * (1 + 0.1 * r)}
            for (rt, s), r in itertools.product([("labkit", 0.005), ("runc", 0.03), ("crun", 0.01)], range(6))]
    df = _rows(rows, "start-latency")
    df.attrs["skipped"] = {}
    return df


def sprawl() -> pd.DataFrame:
    rows = [{"backend": b, "approach": a, "repeat": r, "images": 5 if a == "chain" else 1,
             "bytes_total": (5 if a == "chain" else 1) * MiB, "bytes_freed": (5 if a == "chain" else 1) * MiB,
             "deleted": 1}
            for b, a, r in itertools.product(["overlay", "thin", "copy"], ["chain", "once"], range(2))]
    return _rows(rows, "image-sprawl", steps=5, write=MiB)


def cli() -> pd.DataFrame:
    rows = [{"peer": pe, "backend": "", "repeat": r, "seconds": s * (1 + 0.1 * r), "load_1m": 1.0}
            for (pe, s), r in itertools.product([("labkit", 0.2), ("podman", 0.25), ("runc", 0.03)], range(5))]
    return _rows(rows, "cli-latency")


def kernel() -> pd.DataFrame:
    rows = [{"seed": 0, "step": i, "device": "pool", "quantity": q, "model": "1", "kernel": "1" if ok else "2",
             "match": ok, "explained": "" if ok or q != "order" else "allocation order", "detail": "", "repeat": 1}
            for i, (q, ok) in enumerate(itertools.product(["content", "mapped", "order"], [True, True, False]))]
    return _rows(rows, "kernel-diff")


def minimal() -> pd.DataFrame:
    rows = [{"app": a, "way": w, "backend": "overlay", "repeat": r, "bytes_total": size, "run_seconds": 0.05}
            for a, (w, size), r in itertools.product(["hello", "curl"], [("figure2", 300 * MiB), ("packages", 40 * MiB),
                                                                       ("minimal", 2 * MiB)], range(2))]
    return _rows(rows, "minimal-image")


def recipe() -> pd.DataFrame:
    shape = {"first build": (0.2, 5, 6, 2, 7, MiB), "after change": (0.06, 1, 3, 3, 7, 2 * MiB),
             "after prune": (0.003, 0, 0, 3, 7, MiB)}
    rows = [{"backend": "overlay", "change": c, "method": m, "phase": ph, "repeat": r,
             "seconds": v[0] * (2 if m == "recipe" else 1), "steps_run": v[1] if m == "hand" else v[2],
             "chain_depth": v[3] if m == "hand" else v[4], "bytes_added": v[5] + (64 << 10) * (m == "recipe")}
            for c, m, (ph, v), r in itertools.product(["app", "dependency"], ["hand", "recipe"], shape.items(),
                                                      range(2))]
    return _rows(rows, "recipe-vs-hand")


FRAMES = {"snapshot-time": snapshot_time, "space-vs-containers": space, "cow-penalty": cow, "commit-cost": commit,
          "block-size": block, "pool-exhaustion": pool, "thin-io": thin_io, "start-latency": start,
          "image-sprawl": sprawl, "cli-latency": cli, "kernel-diff": kernel, "minimal-image": minimal,
          "recipe-vs-hand": recipe}
REPORTED = ("snapshot-time", "space-vs-containers", "cow-penalty", "commit-cost", "block-size", "pool-exhaustion",
            "thin-io", "start-latency", "image-sprawl")


def _labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]


def _overlaps(boxes) -> list:
    return [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b) and
            min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1]


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_every_figure_reads_well(name):
    fig = plots.plot(FRAMES[name]())
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        assert ax.get_legend() is None, f"{name}: a legend inside the axes may cover data"
        for axis in (ax.xaxis, ax.yaxis):
            texts = [t for t in axis.get_ticklabels() + axis.get_ticklabels(minor=True)
                     if t.get_visible() and t.get_text()]
            assert not _overlaps([t.get_window_extent(renderer) for t in texts]), f"{name}: tick labels overlap"
            assert not [t.get_text() for t in axis.get_ticklabels(minor=True) if t.get_text()], "minor tick labels"
            assert not any(re.search(r"10\^|×10|e[+-]\d", t) for t in _labels(axis)), _labels(axis)
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes] + [lg.get_window_extent(renderer) for lg in fig.legends]
    assert not _overlaps(boxes), f"{name}: axes or legend overlap"
    png, meta = fig._repr_png_()
    assert png.startswith(b"\x89PNG") and meta["alt"]


def test_sizes_are_ticked_where_measured_with_the_labels_asked_for():
    fig = plots.plot(snapshot_time())
    ax = fig.axes[0]
    assert _labels(ax.xaxis) == ["16 MiB", "256 MiB", "1 GiB"]
    assert all(re.fullmatch(r"\d+(\.\d+)? (µs|ms|s)", t) for t in _labels(ax.yaxis)), _labels(ax.yaxis)
    fig = plots.plot(cow())
    assert _labels(fig.axes[0].xaxis) == ["4 KiB", "64 KiB", "1 MiB"]


def test_commit_cost_labels_its_right_chart_on_the_right():
    left, right = plots.plot(commit()).axes
    assert right.yaxis.get_label_position() == "right" and right.get_ylabel() == "bytes the new image adds"
    assert left.get_ylabel().startswith("commit time")
    assert all(t.endswith("iB") for t in _labels(right.yaxis)), _labels(right.yaxis)


def test_a_figure_has_one_representation():
    """Jupyter shows what a cell returns once: the figure has a PNG and nothing else that renders (no pyplot
    figure manager that would draw it a second time at the end of the cell)."""
    IPython = pytest.importorskip("IPython")
    fig = plots.plot(block())
    assert fig.canvas.manager is None
    data, meta = IPython.core.formatters.DisplayFormatter().format(fig)
    assert set(data) == {"image/png", "text/plain"} and meta["image/png"]["alt"]


@pytest.mark.parametrize("seconds,text", [(0.000719, "719 µs"), (0.0213, "21.3 ms"), (4.2, "4.2 s"),
                                          (0.99996, "1 s"), (120.0, "120 s"), (3e-8, "30 ns")])
def test_format_seconds(seconds, text):
    assert plots.format_seconds(seconds) == text


def test_human_tables_for_people():
    df = pd.DataFrame({"id": ["ab" * 32], "size": [8454144.0], "freed_bytes": [0], "seconds": [0.000719],
                       "cpu_usage_ns": [6_140_000], "tags": [("a:1", "b:2")], "pids": [np.nan]})
    h = plots.human(df)
    assert h.iloc[0].tolist() == ["ab" * 6, "8.1 MiB", "0 B", "719 µs", "6.14 ms", "a:1, b:2", "–"]


def test_every_experiment_has_a_figure_here():
    from labkit.experiments import framework
    assert set(framework.names()) <= set(FRAMES) <= set(plots.PLOTS)


@pytest.mark.parametrize("name", REPORTED)
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_tables_and_findings_in_human_units(name, lang):
    df = FRAMES[name]()
    t = findings.table(name, df)
    text = t.to_string(index=False)
    assert not re.search(r"\d\.\d{4,}|\b\d{7,}\b", text), text      # no 0.000719, no 8454144.0
    sentence = findings.finding(name, df, lang)
    assert re.search(r"\d", sentence) and sentence != findings.finding(name, df.iloc[:0], lang)
    assert findings.about(name, lang) and findings.title(name, lang)
    if lang == "ja":
        assert re.search(r"[\u3040-\u30ff]", sentence + findings.conclusion(name, df, lang))


def test_findings_say_what_the_data_says():
    assert findings.finding("snapshot-time", snapshot_time()).startswith(
        "A thin snapshot takes about 8.8 ms to prepare and mount whether the image is 16 MiB or 1 GiB; "
        "a full copy grows 64× over the same range")
    assert "copy stores the image again" in findings.finding("space-vs-containers", space())
    first_write = findings.finding("cow-penalty", cow())
    assert "costs overlay" in first_write and "whole file" in first_write
    assert "“No space left on device”" in findings.finding("pool-exhaustion", pool())


def test_report_sections_show_each_figure_once_and_a_failure_as_an_error():
    ok = report.Outcome("block-size", {"repeat": 3}, df=block(), csv="/x/block-size.csv")
    bad = report.Outcome("thin-io", {"repeat": 3}, error="thin-io: FUSE is missing: apt-get install fuse3",
                         traceback="Traceback ...")
    outcomes = {"block-size": ok, "thin-io": bad}
    html = "".join(str(p) for n, o in enumerate(outcomes.values(), 1) for p in report.section(o, n))
    assert html.count("<img alt=") == 1 and "This experiment failed: thin-io failed" in html
    assert "apt-get install fuse3" in html and "<details>" in html
    first = report.title_page(outcomes, {"kernel": "6.1", "cpus": 2}, quick=True)
    assert "not measured" in first and "64 KiB blocks" in first and "Quick mode" in first
    assert "failed" in report.contents(outcomes) and "Appendix" in report.contents(outcomes)
    appendix = report.appendix(outcomes, {"kernel": "6.1"}, None)
    assert "block-size.csv" in appendix and "repeat=3" in appendix
    assert report.headline(outcomes)["thin-io"] == {"error": bad.error}
    ja = report.title_page(outcomes, {"kernel": "6.1"}, lang="ja")
    assert "わかったこと" in ja and "測定できませんでした" in ja


def test_report_section_names_the_cases_that_failed_beside_the_others():
    """A sweep that lost some cases (framework.run keeps the others' rows) says which, and why, in both languages."""
    df = block()
    df.attrs["failed"] = {"block_size=3K": "block size 3 KiB: must be 64 KiB..1 GiB in steps of 64 KiB"}
    out = report.Outcome("block-size", {"repeat": 3}, df=df, csv="/x/block-size.csv")
    html = "".join(str(p) for p in report.section(out, 1))
    assert "Some cases of this experiment failed" in html and "block_size=3K" in html and "64 KiB..1 GiB" in html
    assert html.count("<img alt=") == 1          # the other cases' figure still shows
    assert "一部のケースが失敗しました" in "".join(str(p) for p in report.section(out, 1, lang="ja"))
