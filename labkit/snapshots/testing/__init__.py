"""The conformance suite every snapshot backend passes (after containerd's ``core/snapshots/testsuite``).

Each check is a function ``check_<name>(sn, work)`` that drives a fresh, empty :class:`Snapshotter` through
the public contract only (prepare, view, commit, remove, stat, update, usage, mounts, walk, close and the
returned :class:`Mount` values) and raises ``AssertionError`` naming what went wrong. ``work`` is a scratch
directory for mount targets and reference trees; every mount a check makes is undone when the check ends,
even when it fails (``with mount.mount(target):``). :data:`CHECKS` lists them all, in order.

Most content checks follow containerd's method: the same small operations (``create_file``, ``chown``,
``rename``, ...) are applied to a snapshot and to a plain reference directory (the *flat* tree), each layer
is committed, and a view of the committed snapshot must equal the flat tree: types, modes, owners, sizes,
SHA-256 of contents, file mtimes (whole seconds), symlink targets, device numbers, ``user.*`` xattrs and
which names are hard links of each other. Directory mtimes are not compared.

The package, by theme (containerd's 21 checks keep their names and trees; labkit's own sit beside them):

* :mod:`.ops` — the operations; :mod:`.helpers` — the registry, mounting, tree manifests, layer building;
* :mod:`.checks_basic` — lifecycle and metadata (basic, stat, update, walk, remove);
* :mod:`.checks_errors` — refusals that leave nothing behind, read-only views, close;
* :mod:`.checks_layers` — content through chains of layers (renames, chown, hard links, 128 layers, ...);
* :mod:`.checks_mounts` — mounts(), mounted snapshots, siblings, concurrency, reopening;
* :mod:`.checks_usage` — exclusive usage;
* :mod:`.checks_symlinks` — host-side code never follows a symlink a container planted.

A new backend does not write its own copy of these checks: registering it in
``labkit/snapshots/__init__.py`` is enough, ``tests/snapshots/test_conformance.py`` runs every check against
every registered backend (skipping, with the reason, those the host cannot run). To run one check by hand
(as root)::

    >>> import pathlib, tempfile                                      # doctest: +SKIP
    >>> from labkit.snapshots import open_snapshotter                 # doctest: +SKIP
    >>> from labkit.snapshots.testing import CHECKS, run_check        # doctest: +SKIP
    >>> run_check("mybackend", "rename", tempfile.mkdtemp())          # doctest: +SKIP
    >>> tmp = pathlib.Path(tempfile.mkdtemp())     # or by hand, with your own snapshotter   # doctest: +SKIP
    >>> sn = open_snapshotter("mybackend", tmp / "store")             # doctest: +SKIP
    >>> try:                                                          # doctest: +SKIP
    ...     CHECKS["basic"](sn, tmp / "work")
    ... finally:
    ...     sn.close()

Helpers (``mounted``, ``commit_layer``, ``check_layers``, ``assert_same_tree``, the operations) are public
so that experiments and notebooks can build layered snapshots the same way.
"""
from __future__ import annotations

import os
import pathlib

from .. import open_snapshotter

# the check modules register their checks in CHECKS when imported; this order is the order of CHECKS
# isort: off
from . import checks_basic, checks_errors, checks_layers, checks_mounts, checks_usage, checks_symlinks  # noqa: F401
# isort: on
from .helpers import (
    CHECKS,
    assert_same_tree,
    assert_view,
    check_layers,
    commit_layer,
    leftover_mounts,
    mount_point,
    mounted,
    tree_manifest,
)
from .ops import (
    MTIME,
    Op,
    apply,
    chmod,
    chown,
    create_dir,
    create_file,
    link,
    mkfifo,
    mknod,
    mksock,
    remove_all,
    remove_xattr,
    rename,
    set_mtime,
    set_xattr,
    symlink,
    write_at,
)

__all__ = ["CHECKS", "run_check", "mounted", "mount_point", "commit_layer", "check_layers", "assert_view",
           "tree_manifest", "assert_same_tree", "leftover_mounts", "Op", "apply", "create_file", "create_dir",
           "remove_all", "chown", "chmod", "rename", "link", "symlink", "set_xattr", "remove_xattr",
           "set_mtime", "write_at", "mkfifo", "mknod", "mksock", "MTIME"]


def run_check(backend: str, name: str, tmp: str | os.PathLike[str], **options: object) -> None:
    """Run one check against ``backend`` with a fresh store in ``tmp/store`` and scratch space in
    ``tmp/work``; closes the snapshotter and fails if anything stays mounted under ``tmp``.

    >>> run_check("copy", "basic", tempfile.mkdtemp())     # doctest: +SKIP
    """
    tmp = pathlib.Path(tmp)
    sn = open_snapshotter(backend, tmp / "store", **options)
    try:
        CHECKS[name](sn, tmp / "work")
    finally:
        sn.close()
    left = leftover_mounts(tmp)
    assert not left, f"{name}: mounts left behind: {left}"
