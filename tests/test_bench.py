"""The snapshot-time benchmark yields tidy rows (its times are printed, never asserted)."""
from __future__ import annotations

import pytest

from labkit.experiments import load, save, snapshot_time


@pytest.mark.root
def test_snapshot_time_rows(tmp_path):
    df = snapshot_time.run(["copy", "overlay"], ["256K", "1M"], repeat=2, root=str(tmp_path), progress=False)
    assert {"backend", "parent_bytes", "phase", "repeat", "seconds", "kernel", "store_fs", "warmup"} <= set(df.columns)
    assert set(df.phase) == set(snapshot_time.PHASES)
    assert len(df) == 2 * 2 * 3 * len(snapshot_time.PHASES)
    assert (df.seconds > 0).all() and df.warmup.sum() == 2 * 2 * len(snapshot_time.PHASES)
    table = snapshot_time.medians(df)
    assert list(table.index) == ["copy", "overlay"] and list(table.columns) == ["256 KiB", "1 MiB"]
    csv, meta = save(df, str(tmp_path / "out" / "st.csv"))
    assert len(load(csv)) == len(df)
    assert not list(tmp_path.glob("bench-*"))
