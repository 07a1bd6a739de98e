"""The minimal-image lesson in real Labs: an application built three ways (figure 2, packages only, only the
files it touches) from the package cache, each checked by the application's own command.

The first run fills the package cache (/var/cache/labkit or $LABKIT_CACHE: the Debian minbase via
mmdebstrap, ~1 min, and the applications' .debs) from the mirror apt is configured with; later runs are
offline. A cache that cannot be filled fails the test with apt's or mmdebstrap's message: nothing is
skipped on a machine that can run it.
"""
from __future__ import annotations

import os

import pytest

from labkit import Lab, errors
from labkit.experiments import framework
from labkit.experiments import minimal_image as mi
from labkit.images.minimal import APPS, WAYS, PackageCache


def test_registered_with_the_framework() -> None:
    exp = framework.get("minimal-image")
    assert [p.name for p in exp.params] == ["app", "backend", "cache"]
    assert set(exp.param("app").choices) == set(APPS) and exp.param("app").sweep
    assert "figure2" in exp.columns["way"] and "minimal-image" in exp.describe()


@pytest.fixture(scope="module")
def cache() -> PackageCache:
    c = PackageCache()
    c.ensure([a.package for a in APPS.values()] + ["strace"])
    c.debian_tarball()
    return c


@pytest.mark.root
@pytest.mark.slow
def test_hello_three_ways_through_the_framework(cache, tmp_path) -> None:
    df = framework.run("minimal-image", repeat=1, root=str(tmp_path), progress=False, app="hello",
                       backend="overlay", cache=cache.root)
    d = df[~df.warmup].set_index("way")
    assert list(d.index) == list(WAYS) and d.check_ok.all()
    assert d.loc["minimal", "image_bytes"] * 20 < d.loc["figure2", "image_bytes"]
    assert d.loc["minimal", "files"] < d.loc["packages", "files"] < d.loc["figure2", "files"]
    fig2 = d.loc["figure2"]
    assert fig2.bytes_exclusive < fig2.bytes_total and fig2.base_bytes > 100 << 20     # shares the base
    assert d.loc["minimal", "bytes_exclusive"] == d.loc["minimal", "bytes_total"]       # no parent
    assert (d.start_seconds > 0).all() and (d.first_write_seconds > 0).all() and (d.written_file_bytes > 0).all()
    assert not os.listdir(tmp_path)                                                     # scratch removed
    assert cache.ensure(["hello", "strace"]) is False                                   # offline now


@pytest.mark.root
@pytest.mark.slow
def test_every_application_runs_from_its_minimal_image(cache, tmp_path) -> None:
    lab = Lab(str(tmp_path / "store"), "overlay")
    try:
        rows = []
        for name in APPS:
            built = mi.build(lab, name, cache=cache, workdir=str(tmp_path))
            assert built["minimal"].check_ok, name
            rows += mi.measure(lab, name, built, repeat=0)
        ok = {(r["app"], r["way"]): r["check_ok"] for r in rows}
        files = {(r["app"], r["way"]): r["files"] for r in rows}
        for name in APPS:
            assert ok[name, "figure2"] and ok[name, "minimal"], name
            assert files[name, "minimal"] < files[name, "packages"] < files[name, "figure2"], name
        # unpacking is not installing: nginx's www-data user comes from base-passwd, which no package pulls in
        assert not ok["nginx", "packages"]
        assert [w for w in os.listdir(tmp_path) if w.startswith("minimal-")] == []      # work trees removed

        lacks = mi.probe(lab, "hello:minimal", ["/bin/sh", "/usr/bin/apt-get", "/etc/passwd", "/usr/bin/hello"])
        assert lacks == {"/bin/sh": False, "/usr/bin/apt-get": False, "/etc/passwd": False, "/usr/bin/hello": True}
        has = mi.probe(lab, "hello:figure2", ["/bin/sh", "/usr/bin/apt-get"])
        assert has == {"/bin/sh": True, "/usr/bin/apt-get": True}
        with pytest.raises(errors.InvalidArgument, match="No such file"):
            lab.run("hello:minimal", ["sh", "-c", "true"], rm=True)
        # the trace saw one run: another code path needs files it never touched
        other = ["python3", "-c", "import sqlite3"]
        assert lab.run("python3:figure2", other, rm=True).exit_code == 0
        assert lab.run("python3:minimal", other, rm=True).exit_code == 1
        assert lab.ps().empty
    finally:
        lab.reset()
        lab.close()


@pytest.mark.root
@pytest.mark.slow
def test_thin_backend(cache, tmp_path) -> None:
    df = framework.run("minimal-image", repeat=1, root=str(tmp_path), progress=False, app="busybox-httpd",
                       backend="thin", cache=cache.root)
    d = df[~df.warmup].set_index("way")
    assert d.check_ok.all() and d.loc["minimal", "image_bytes"] * 20 < d.loc["figure2", "image_bytes"]
    assert (d.first_write_seconds > 0).all()
    assert not os.listdir(tmp_path)


def test_summary_orders_the_ways() -> None:
    import pandas as pd
    rows = [{"backend": "overlay", "app": "a", "way": w, "warmup": False, "check_ok": True,
             **{c: 1.0 for c in ("image_bytes", "bytes_exclusive", "bytes_total", "files", "build_seconds",
                                 "import_seconds", "start_seconds", "run_seconds", "first_write_seconds")}}
            for w in reversed(WAYS)]
    s = mi.summary(pd.DataFrame(rows))
    assert list(s.index.get_level_values("way")) == list(WAYS) and s.check_ok.all()
