"""The column's figure-2 workflow through the Lab facade, on every backend that runs here."""
from __future__ import annotations

import os

import pytest

from labkit import Lab, errors
from labkit.snapshots import backend_status

pytestmark = pytest.mark.root
BACKENDS = [s.name for s in backend_status("/tmp") if s.available]
OPTIONS = {"thin": {"data_size": "2G", "base_size": "512M"}, "btrfs": {"loop_size": "1G"},
           "reflink": {"loop_size": "1G"}}


@pytest.mark.parametrize("backend", BACKENDS)
def test_figure_2_workflow(tmp_path, backend):
    with Lab(str(tmp_path / "lab"), backend, **OPTIONS.get(backend, {})) as lab:
        lab.import_image("busybox", tag="busybox")
        c = lab.run("busybox", ["sh", "-c", "mkdir -p /app && echo v1 > /app/version"], name="build")
        assert c.exit_code == 0, c.output
        new = lab.commit(c, "app:v1")
        c.remove()
        assert [i.name for i in lab.sn.walk("name==ctr-build")] == []          # its snapshot is gone
        run = lab.run("app:v1", ["cat", "/app/version"], rm=True, name="reader")
        assert run.output == "v1\n" and run.exit_code == 0
        assert [i.name for i in lab.sn.walk("labels.labkit.container==reader")] == []   # --rm threw it away
        hist = lab.history("app:v1")
        assert hist.created_by.iloc[0].startswith("sh -c mkdir") and len(hist) == 2
        images = lab.images()
        assert len(images) == 2 and new in set(images.id)
        assert "app:v1" in lab.tree()
        with pytest.raises(errors.LabkitError):
            lab.run("no-such-image", ["true"])
        assert [i.name for i in lab.sn.walk("kind==active")] == []              # nothing half-made


def test_running_container_commit_and_exec(tmp_path):
    with Lab(str(tmp_path / "lab"), "overlay") as lab:
        lab.import_image("busybox", tag="busybox")
        c = lab.run("busybox", ["sh", "-c", "echo live > /state; sleep 30"], name="svc", detach=True)
        try:
            for _ in range(100):
                if c.exec(["cat", "/state"])[1] == "live\n":
                    break
            code, out = c.exec(["ps", "-o", "pid,comm"])
            pids = [line.split()[0] for line in out.splitlines()[1:]]
            assert code == 0 and pids[0] == "1" and len(pids) <= 3, out           # its own PID namespace
            lab.commit(c, "svc:snap")
            assert c.status == "running"                                         # frozen, not stopped
            c.stop(timeout=1)
        finally:
            c.remove(force=True)
        r = lab.run("svc:snap", ["cat", "/state"], rm=True)
        assert r.output == "live\n"


@pytest.mark.parametrize("name", ["x/../../../victim", "../victim", "a b", "", "-x", ".hidden", "x" * 129, "é"])
def test_hostile_container_names_touch_nothing(tmp_path, name):
    """`labkit run --name 'x/../../../victim'` once rmtree'd a host directory outside the store."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("precious")
    with Lab(str(tmp_path / "lab" / "store"), "overlay") as lab:
        lab.import_image("busybox", tag="busybox")
        with pytest.raises(errors.InvalidArgument, match="container name"):
            lab.run("busybox", ["true"], name=name, rm=True)
        assert [i.name for i in lab.sn.walk("kind==active")] == []
    assert (victim / "keep").read_text() == "precious"


def test_one_way_in_history_rmi_prune_reset(tmp_path):
    with Lab(str(tmp_path / "lab"), "overlay") as lab:
        lab.import_image("busybox", tag="busybox")
        c = lab.run("busybox", ["sh", "-c", "echo 1 > /f"], name="b1")
        lab.commit(c, "app:v1")
        c.remove()
        with pytest.raises(errors.NotFound, match="was removed"):
            c.exec(["true"])                                    # a labkit error, not AttributeError
        hist = lab.history("app:v1")
        assert hist.created_by.iloc[0].startswith("sh -c echo") and len(hist) == 2
        assert "app:v1" in lab.inspect("app:v1")["tags"]
        lab.tag("app:v1", "app:latest")
        out = lab.rmi("app:v1")                                 # one of two tags: only untagged
        assert list(out.action) == ["untagged"] and list(out.what) == ["app:v1"]
        out = lab.rmi("app:latest")
        assert "deleted" in set(out.action) and out.freed_bytes.sum() >= 0
        lab.run("busybox", ["sleep", "30"], name="left", detach=True)
        lab.reset()                                             # a notebook's fresh start
        assert len(lab.images()) == 0 and len(lab.ps()) == 0 and list(lab.sn.walk()) == []
        assert os.path.exists(os.path.join(lab.root, ".labkit-store"))


def test_root_slash_refused():
    with pytest.raises(errors.InvalidArgument, match="store root '/'"):
        Lab("/", "copy")


def test_check_reports_and_repairs_a_store(tmp_path):
    with Lab(str(tmp_path / "lab"), "overlay") as lab:
        lab.import_image("busybox", tag="busybox")
        assert lab.check() == []                                    # a clean store
        stray = os.path.join(lab.root, "rootfs", "ctr-ghost")
        os.makedirs(stray)
        rows = lab.check()
        assert [r["part"] for r in rows] == ["rootfs"] and "ghost" in rows[0]["problem"]
        assert os.path.isdir(stray)                                 # reporting changes nothing
        lab.check(repair=True)
        assert not os.path.exists(stray) and lab.check() == []
