"""Widgets driven from code, as a notebook would: values measured, not just 'no exception'."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("ipywidgets", reason="widgets need ipywidgets (make test installs it)")

from labkit.snapshots import open_snapshotter  # noqa: E402
from labkit.widgets import BlockMap, ExperimentPanel  # noqa: E402


def test_panel_controls_follow_the_declared_parameters():
    panel = ExperimentPanel("space-vs-containers")
    assert set(panel.controls) == {"backend", "containers", "write", "image_size"}
    assert panel.controls["containers"].min == 1 and panel.controls["containers"].max == 200
    panel.controls["write"].value = "a lot"
    panel.run()
    assert "write" in panel.status.value and panel._thread is None  # refused before starting


@pytest.mark.root
def test_panel_runs_in_a_thread_and_collects_results(tmp_path):
    panel = ExperimentPanel("commit-cost", root=str(tmp_path), repeat=1, backend=["copy", "overlay"],
                            changed=["256K"], image_size="1M")
    panel.run(wait=True)
    assert panel.status.value.startswith("done"), panel.status.value
    assert sorted(panel.results.backend.unique()) == ["copy", "overlay"]
    assert panel.progress.value == panel.progress.max == 2
    assert (panel.results.bytes_added >= 256 << 10).all()


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
        sn.remove("c1")


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
        assert "bb:v1" in ib.inspect()["tags"]
        c = lab.run("busybox", ["sh", "-c", "echo up; sleep 30"], name="svc", detach=True)
        try:
            cp = ContainerPanel(lab)
            table = cp.refresh()
            assert list(table.name) == ["svc"] and table.pids.iloc[0] >= 1
            cp.select.value = "svc"
            cp.tag_text.value = "svc:snap"
            cp.commit()
            cp.stop()
            assert "up" in cp.show_logs()
            ib.refresh()
            assert len(ib.select.options) == 2
            ib.select.value = lab.store.resolve("busybox")[:12]
            ib._guard(ib.remove)            # the button: refused, an image and a container use it
            assert "used by" in ib.status.value
        finally:
            c.remove(force=True)
