"""The debian base image: mmdebstrap minbase from the host's configured mirror, cached, imported twice.

Slow (~20-60 s): it downloads from the mirror apt is configured with. If the mirror cannot be reached the
test fails with mmdebstrap's message; it never skips silently.
"""
from __future__ import annotations

import os
import shutil
import time

import pytest

from labkit.images import ImageStore, sources
from labkit.snapshots import open_snapshotter

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mmdebstrap --mode=root, mounts")]


def test_debian_minbase(tmp_path, monkeypatch) -> None:
    assert shutil.which("mmdebstrap"), "the debian image needs mmdebstrap: apt-get install mmdebstrap"
    mirror = sources.debian_mirror()
    assert mirror.startswith(("http://", "https://", "file:/")), mirror
    sn = open_snapshotter("copy", tmp_path / "sn")
    store = ImageStore(tmp_path / "images", sn)
    try:
        first = store.import_debian(tag="debian:bookworm")
        cached = tmp_path / "images" / "cache" / "debian-bookworm-minbase.tar"
        assert cached.stat().st_size > 50 << 20
        # the second import is offline: no mmdebstrap, no mirror
        monkeypatch.setattr(sources.shutil, "which", lambda name: None)
        t0 = time.monotonic()
        second = store.import_debian(tag="debian:again")
        offline_s = time.monotonic() - t0
        assert second != first and offline_s < 60
        info = store.inspect("debian:bookworm")
        assert info.created_by.startswith("mmdebstrap") and info.size > 50 << 20

        def check(root: str) -> None:
            with open(os.path.join(root, "etc", "debian_version")) as f:
                assert f.read().startswith("12")
            assert os.stat(os.path.join(root, "usr", "bin", "su")).st_mode & 0o4000   # setuid kept
            assert os.path.islink(os.path.join(root, "bin"))                           # merged /usr
        with store.mounted(second) as r:
            check(r)
    finally:
        store.close()
        sn.close()
