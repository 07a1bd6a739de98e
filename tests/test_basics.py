"""Sizes, the error tree, the pinned public API and the docstring examples."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import labkit
import labkit.snapshots
from labkit import errors
from labkit.units import format_size, parse_size


@pytest.mark.parametrize("text,expected", [("64K", 65536), ("10G", 10 << 30), ("1.5M", 3 << 19), ("512", 512),
                                           ("4 KiB", 4096), (0, 0), ("2t", 2 << 40)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "ten", "-1K", "1Q", -5, True, "1.2.3M"])
def test_parse_size_rejects_with_a_fix(bad):
    with pytest.raises(errors.InvalidArgument) as e:
        parse_size(bad, what="pool size")
    assert "pool size" in str(e.value) and "\n" not in str(e.value)


def test_format_size():
    assert format_size(16 << 20) == "16 MiB" and format_size(100) == "100 B"


def test_error_messages_are_one_line_with_subject_and_fix():
    e = errors.Unsupported("btrfs backend", "needs mkfs.btrfs", fix="apt-get install btrfs-progs")
    assert str(e) == "btrfs backend: needs mkfs.btrfs: apt-get install btrfs-progs"
    assert str(errors.NotFound("image 'x'")) == "image 'x' not found"
    assert str(errors.AlreadyExists("snapshot 'a'")) == "snapshot 'a' already exists"
    for cls in (errors.NotFound, errors.AlreadyExists, errors.FailedPrecondition, errors.InvalidArgument,
                errors.Unsupported):
        assert issubclass(cls, errors.LabkitError)


def test_public_api_is_pinned():
    assert labkit.__all__ == ["__version__", "Lab"] and labkit.Lab.__doc__
    assert sorted(labkit.snapshots.__all__) == sorted([
        "Snapshotter", "BaseSnapshotter", "Info", "Kind", "Usage", "Mount", "Mounted", "parse_filters",
        "backend_class", "backend_names", "backend_status", "default_backend", "open_snapshotter", "BackendStatus",
        "Recovered", "StoreSpace", "SnapshotBlock", "PoolBacked", "BlockMapped"])
    for name in labkit.snapshots.__all__:
        assert getattr(labkit.snapshots, name).__doc__, name


def _modules():
    for m in pkgutil.walk_packages(labkit.__path__, "labkit."):
        yield m.name


@pytest.mark.parametrize("modname", sorted(_modules()))
def test_docstring_examples(modname):
    mod = importlib.import_module(modname)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
