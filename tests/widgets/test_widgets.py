"""Widgets driven from code, as a notebook would: values measured, not just 'no exception'."""
from __future__ import annotations

import os
import re

import pytest

pytest.importorskip("ipywidgets", reason="widgets need ipywidgets (make test installs it)")

from labkit import errors
from labkit.snapshots import open_snapshotter
from labkit.widgets import BlockMap, ExperimentPanel, block_matrix

PNG = b"\x89PNG\r\n\x1a\n"


def test_panel_controls_follow_the_declared_parameters():
    panel = ExperimentPanel("space-vs-containers")
    assert set(panel.controls) == {"backend", "containers", "write", "image_size"}
    assert panel.controls["containers"].min == 1 and panel.controls["containers"].max == 200
    panel.controls["write"].value = "a lot"
    panel.run()
    assert "write" in panel.status.value and panel._thread is None  # refused before starting


def test_run_button_shows_plot_and_table_from_its_thread(tmp_path):
    """The Run button's thread delivers its figure (PNG bytes) and summary (an HTML table with rows) as widget
    values: what reaches JupyterLab, unlike output printed into an Output widget from a thread."""
    panel = ExperimentPanel("block-size", root=str(tmp_path), repeat=1, block_size=["64K", "128K"],
                            image_size="1M", writes=5)
    panel.button.click()                          # what a click in the browser does
    assert panel.wait(timeout=60), "the run did not finish"
    assert panel.status.value == "done: 4 rows", (panel.status.value, panel.error)
    assert bytes(panel.plot.value).startswith(PNG) and len(panel.plot.value) > 1000
    assert panel.table.value.count("<tr") == 3    # a header and one row per block size
    assert "64 KiB" in panel.table.value and "128 KiB" in panel.table.value   # human units, no index column
    assert not re.search(r"\d\.\d{4,}|>\s*65536\s*<", panel.table.value)
    assert "64 KiB blocks" in panel.finding.value and "128 KiB blocks" in panel.finding.value
    assert panel.progress.value == panel.progress.max == 2 and not panel.button.disabled
    assert not list(tmp_path.iterdir())           # every case removed its scratch pool


def test_a_failed_run_says_so_in_the_panel(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    panel = ExperimentPanel("block-size", root=str(blocker), repeat=1, block_size=["64K"], image_size="1M", writes=1)
    panel.button.click()
    panel.wait(timeout=60)
    assert panel.status.value.startswith("failed:") and panel.progress.bar_style == "danger"
    assert panel.error and "Traceback" in panel.error and not panel.button.disabled


@pytest.mark.root
def test_panel_runs_in_a_thread_and_collects_results(tmp_path):
    panel = ExperimentPanel("commit-cost", root=str(tmp_path), repeat=1, backend=["copy", "overlay"],
                            changed=["256K"], image_size="1M")
    panel.run(wait=True)
    assert panel.status.value.startswith("done"), panel.status.value
    assert sorted(panel.results.backend.unique()) == ["copy", "overlay"]
    assert panel.progress.value == panel.progress.max == 2
    assert (panel.results.bytes_added >= 256 << 10).all()
    assert bytes(panel.plot.value).startswith(PNG) and "copy" in panel.table.value


@pytest.mark.root
def test_block_map_shows_own_and_shared_blocks(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    with open_snapshotter("thin", tmp_path / "s", data_size="1G", base_size="256M") as sn:
        with sn.prepare("a").mount(target):
            (target / "img").write_bytes(os.urandom(2 << 20))
        sn.commit("image", "a")
        with sn.prepare("c1", "image").mount(target):
            before = BlockMap(sn, "c1").counts
            (target / "new").write_bytes(os.urandom(1 << 20))
            os.sync()
            bm = BlockMap(sn, "c1")
        assert before["exclusive"] < bm.counts["exclusive"]
        assert bm.counts["exclusive"] >= 16           # 1 MiB of 64 KiB blocks
        assert bm.counts["shared"] >= 32              # the image's 2 MiB still shared
        assert bytes(bm.image.value).startswith(PNG)
        m, legend, _ = block_matrix(sn, "c1", width=64)
        assert m.shape[1] == 64 and legend[0] == "c1" and "image" in legend.values()
        sn.remove("c1")
        bm.refresh_button.click()                     # the snapshot is gone: the panel says so
        assert "c1" in bm.status.value and "color:#b00" in bm.status.value
    bm.refresh_button.click()                         # and once the snapshotter is closed
    assert "closed" in bm.status.value


def test_block_map_needs_a_block_mapped_backend(tmp_path):
    with open_snapshotter("copy", tmp_path / "s") as sn:
        sn.prepare("a")
        sn.commit("image", "a")
        with pytest.raises(errors.Unsupported, match="thin"):
            block_matrix(sn, "image")


@pytest.mark.root
def test_image_browser_and_container_panel(tmp_path):
    from labkit import Lab
    from labkit.widgets import ContainerPanel, ImageBrowser
    with Lab(str(tmp_path / "lab"), "overlay") as lab:
        lab.import_image("busybox", tag="busybox")
        ib = ImageBrowser(lab)
        assert "busybox:latest" in ib.tree.value and len(ib.select.options) == 1
        ib.cmd.value = "cat /etc/hostname"
        assert ib.run().strip()
        ib.tag_text.value = "bb:v1"
        ib.tag()
        assert "bb:v1" in ib.inspect()["tags"] and "bb:v1" in ib.details.value
        # sizes, not raw bytes (a hex image id like b6f798633a2d has digit runs of its own: whole words only)
        assert not re.search(r"(?<![\w.])\d{6,}(?![\w.])", ib.tree.value) and "MiB" in ib.details.value
        c = lab.run("busybox", ["sh", "-c", "echo up; sleep 30"], name="svc", detach=True)
        try:
            cp = ContainerPanel(lab)
            table = cp.refresh()
            assert list(table.name) == ["svc"] and table.pids.iloc[0] >= 1
            assert "svc" in cp.table.value and cp.select.value == "svc"      # selected: Logs works at once
            assert re.search(r"\d (KiB|MiB)<", cp.table.value) and "memory_bytes" not in cp.table.value
            cp.tag_text.value = "svc:snap"
            cp.commit()
            cp.stop()
            assert "up" in cp.show_logs() and "up" in cp.logs.value
            ib.refresh()
            assert len(ib.select.options) == 2
            busybox = lab.inspect("busybox")["id"]
            ib.select.value = next(v for _, v in ib.select.options if busybox.startswith(v))
            ib.guard(ib.remove)             # the button: refused, an image and a container use it
            assert "used by" in ib.status.value
        finally:
            c.remove(force=True)
    buttons = {b.description: b for box in ib.children if hasattr(box, "children") for b in box.children
               if hasattr(b, "on_click")}
    buttons["Refresh"].click()              # the Lab is closed: the panel says so, the click does not raise
    assert "closed" in ib.status.value
    cp.guard(cp.refresh)
    assert "closed" in cp.status.value
