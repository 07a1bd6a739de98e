"""overlay: chains deeper than max_layers (and than the kernel's 500) are flattened, never a crash."""
from __future__ import annotations

import os

import pytest

from labkit import errors
from labkit.snapshots import open_snapshotter

pytestmark = pytest.mark.root


def _chain(sn, n, target):
    parent = None
    for i in range(n):
        with sn.prepare(f"a{i}", parent).mount(target):
            with open(os.path.join(target, f"f{i % 7}"), "w") as f:
                f.write(str(i))
            if i % 5 == 4:
                os.unlink(os.path.join(target, f"f{(i - 1) % 7}"))
        sn.commit(f"c{i}", f"a{i}")
        parent = f"c{i}"
    return parent


def _expected(n):
    files = {}
    for i in range(n):
        files[f"f{i % 7}"] = str(i)
        if i % 5 == 4:
            files.pop(f"f{(i - 1) % 7}", None)
    return files


@pytest.mark.parametrize("n", [3, 4, 11])
def test_flattened_chain_keeps_content(tmp_path, n):
    target = tmp_path / "t"
    target.mkdir()
    with open_snapshotter("overlay", tmp_path / "s", max_layers=3) as sn:
        top = _chain(sn, n, target)
        lowers = [o for o in sn.mounts(sn.prepare("x", top) and "x").options if o.startswith("lowerdir+")]
        assert len(lowers) <= 3
        with sn.view("v", top).mount(target):
            got = {name: open(target / name).read() for name in os.listdir(target)}
        assert got == _expected(n)


@pytest.mark.slow
def test_chain_deeper_than_the_kernel_limit(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    with open_snapshotter("overlay", tmp_path / "s") as sn:
        top = _chain(sn, 520, target)
        with sn.prepare("top", top).mount(target):
            got = {name: open(target / name).read() for name in os.listdir(target)}
        assert got == _expected(520)


def test_max_layers_is_checked(tmp_path):
    with pytest.raises(errors.InvalidArgument, match="500"):
        open_snapshotter("overlay", tmp_path / "s", max_layers=600)
