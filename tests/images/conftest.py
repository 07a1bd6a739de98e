"""Fixtures shared by the image-store tests."""
from __future__ import annotations

import pytest

from labkit.images import ImageStore
from labkit.snapshots import open_snapshotter


@pytest.fixture
def copy_store(tmp_path):
    """An image store on the copy backend (no mounts, no root-only kernel objects), closed afterwards."""
    sn = open_snapshotter("copy", tmp_path / "sn")
    st = ImageStore(tmp_path / "images", sn)
    try:
        yield st
    finally:
        st.close()
        sn.close()
