"""Conformance checks of content through layers: each applies the same operations to a chain of snapshots
and to a flat tree and compares them (containerd's ``checkSnapshots`` method and its docker regressions),
plus labkit's own: metadata kept, committed layers immutable, large, sparse and special files.
"""
from __future__ import annotations

import os
import pathlib
import stat

from ..base import Mount, Snapshotter
from .helpers import (
    _flat,
    _register,
    _user_xattrs_supported,
    assert_same_tree,
    assert_view,
    check_layers,
    commit_layer,
    mounted,
    tree_manifest,
)
from .ops import (
    MTIME,
    MiB,
    _op,
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


@_register
def check_layer_file_update(sn: Snapshotter, work: pathlib.Path) -> None:
    """A file rewritten in a child with the same size and the same mtime still shows the new content
    (docker#21555: a diff by size+mtime misses it)."""
    l1 = [create_dir("/etc", 0o700), create_file("/etc/hosts", b"mydomain 10.0.0.1"),
          create_file("/etc/profile", b"PATH=/usr/bin")]
    l2 = [create_file("/etc/hosts", b"mydomain 10.0.0.2"), create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
          create_dir("/root", 0o700), create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin")]
    for _ in range(2):
        check_layers(sn, work, l1, l2)


@_register
def check_remove_directory_in_lower_layer(sn: Snapshotter, work: pathlib.Path) -> None:
    """A directory removed and re-made in a child does not show the lower layer's files (docker#25244)."""
    check_layers(sn, work,
                 [create_dir("/lib", 0o700), create_file("/lib/hidden")],
                 [remove_all("/lib"), create_dir("/lib", 0o700), create_file("/lib/not-hidden")],
                 [create_file("/lib/newfile")])


@_register
def check_chown(sn: Snapshotter, work: pathlib.Path) -> None:
    """chown of inherited directories and files in a child is committed (docker#20240, #24913, #28391)."""
    check_layers(sn, work,
                 [create_dir("/opt", 0o700), create_dir("/opt/a", 0o700), create_dir("/opt/a/b", 0o700),
                  create_file("/opt/a/b/file.txt", b"hello")],
                 [chown("/opt", 1, 1), chown("/opt/a", 1, 1), chown("/opt/a/b", 1, 1),
                  chown("/opt/a/b/file.txt", 1, 1)])


@_register
def check_directory_permission_on_commit(sn: Snapshotter, work: pathlib.Path) -> None:
    """Owners of directories survive commits, removal and re-creation across three layers (docker#27298)."""
    check_layers(sn, work,
                 [create_dir("/dir1", 0o700), create_dir("/dir2", 0o700), create_dir("/dir3", 0o700),
                  create_dir("/dir4", 0o700), create_file("/dir4/f1", b"..."), create_dir("/dir5", 0o700),
                  create_file("/dir5/f1", b"..."), chown("/dir1", 1, 1), chown("/dir2", 1, 1),
                  chown("/dir3", 1, 1), chown("/dir5", 1, 1), chown("/dir5/f1", 1, 1)],
                 [chown("/dir2", 0, 0), remove_all("/dir3"), chown("/dir4", 1, 1), chown("/dir4/f1", 1, 1)],
                 [create_dir("/dir3", 0o700), chown("/dir3", 1, 1), remove_all("/dir5"),
                  create_dir("/dir5", 0o700), chown("/dir5", 1, 1)])


@_register
def check_deleted_files_in_child(sn: Snapshotter, work: pathlib.Path) -> None:
    """Files and directories deleted in a child stay deleted in the committed child and in a grandchild."""
    check_layers(sn, work,
                 [create_file("/foo", b"foo\n", 0o777), create_file("/foobar", b"foobar\n", 0o777),
                  create_dir("/d/e"), create_file("/d/e/f", b"f"), create_file("/d/keep", b"k")],
                 [remove_all("/foobar"), remove_all("/d/e")],
                 [])


@_register
def check_move_file_from_lower_layer(sn: Snapshotter, work: pathlib.Path) -> None:
    """Files moved (hard link + remove) out of a lower layer's directory appear only at the new place."""
    check_layers(sn, work,
                 [create_dir("/dir1", 0o700), create_file("/dir1/f1", b"Hello"), create_dir("/dir2", 0o700),
                  create_file("/dir2/f2", b"...")],
                 [create_dir("/dir3", 0o700), create_file("/dir3/f1", b"Hello"), remove_all("/dir1"),
                  link("/dir2/f2", "/dir3/f2"), remove_all("/dir2/f2")])


@_register
def check_root_permission(sn: Snapshotter, work: pathlib.Path) -> None:
    """A new snapshot's root is 0755 root:root; a changed root mode and owner are kept by commit and
    inherited by children."""
    with mounted(sn.prepare("preparing"), work) as root:
        st = os.stat(root)
        assert stat.S_IMODE(st.st_mode) == 0o755, f"root of a new snapshot is {stat.S_IMODE(st.st_mode):#o}, not 0o755"
        assert (st.st_uid, st.st_gid) == (0, 0), f"root of a new snapshot is owned by {st.st_uid}:{st.st_gid}"
        os.chmod(root, 0o700)
        os.chown(root, 1000, 1001)
    sn.commit("restricted", "preparing")

    def root_of(m: Mount) -> tuple[int, int, int]:
        with mounted(m, work) as r:
            st = os.stat(r)
            return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid

    assert root_of(sn.view("v", "restricted")) == (0o700, 1000, 1001), "a view lost the committed root's mode/owner"
    with mounted(sn.prepare("child", "restricted"), work) as r:
        st = os.stat(r)
        got = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        assert got == (0o700, 1000, 1001), \
            f"a child's root is {got[0]:#o} {got[1]}:{got[2]}, its parent's is 0o700 1000:1001"
        os.chmod(r, 0o750)
    sn.commit("child-c", "child")
    assert root_of(sn.view("v2", "child-c")) == (0o750, 1000, 1001), "the child's root mode was not committed"
    assert root_of(sn.view("v3", "restricted")) == (0o700, 1000, 1001), "the child's chmod changed its parent"


@_register
def check_rename(sn: Snapshotter, work: pathlib.Path) -> None:
    """Renames in a child: a directory of a lower layer (rename(2) itself must work: EXDEV, as overlayfs
    gives without ``redirect_dir=on``, fails the check), a directory made in the same layer, files over
    files, files into other directories (docker#25409)."""
    check_layers(sn, work,
                 [create_dir("/dir1", 0o700), create_file("/dir1/inside", b"in dir1"), create_dir("/somefiles", 0o700),
                  create_file("/somefiles/f1", b"was here first!"),
                  create_file("/somefiles/f2", b"nothing interesting"),
                  create_file("/somefiles/f4", b"moves")],
                 [rename("/dir1", "/dir2"),
                  create_file("/somefiles/f1-overwrite", b"new content 1"),
                  rename("/somefiles/f1-overwrite", "/somefiles/f1"),
                  rename("/somefiles/f2", "/somefiles/f3"),
                  rename("/somefiles/f4", "/dir2/f4"),
                  create_dir("/fresh/sub", 0o750), create_file("/fresh/sub/x", b"x"),
                  rename("/fresh", "/renamed-fresh")],
                 [rename("/somefiles/f3", "/f3-at-top"), rename("/dir2/inside", "/dir2/inside-renamed")])


@_register
def check_128_layers_mount(sn: Snapshotter, work: pathlib.Path) -> None:
    """A chain of 128 layers mounts; each prepare equals the flat tree, and the top view shows every layer's
    file, the last override of a rewritten file and only the last layer's re-made directory."""
    layers = [[create_file("/bottom", b"way at the bottom\n", 0o777), create_file("/overwriteme", b"FIRST!\n", 0o777),
               create_dir("/addhere"), create_dir("/onlyme"), create_file("/onlyme/bottom", b"bye!\n", 0o777)]]
    for i in range(1, 128):
        layers.append([create_file("/overwriteme", f"{i} WAS HERE!\n".encode(), 0o777),
                       create_file(f"/addhere/file-{i}", b"same\n", 0o755), remove_all("/onlyme"),
                       create_dir("/onlyme"), create_file(f"/onlyme/file-{i}", b"only me!\n", 0o777)])
    flat = _flat(work)
    expected = tree_manifest(flat)       # the flat tree is read once per layer (under emulation this check is
    parent = None                        # mostly reading trees)
    for i, ops in enumerate(layers):
        key = f"prepare-layer-{i}"
        with mounted(sn.prepare(key, parent), work, "layer") as root:
            assert_same_tree(expected, root, f"layer {i} right after prepare")
            apply(flat, *ops)
            apply(root, *ops)
            expected = tree_manifest(flat)
            assert_same_tree(expected, root, f"layer {i} after its changes")
        parent = f"committed-{i}"
        sn.commit(parent, key)
    with mounted(sn.view("fullview", parent), work) as root:
        assert_same_tree(expected, root, "a view of the 128th layer")
        assert (root / "overwriteme").read_bytes() == b"127 WAS HERE!\n"
        assert sorted(os.listdir(root / "onlyme")) == ["file-127"]
        assert len(os.listdir(root / "addhere")) == 127


@_register
def check_metadata_kept(sn: Snapshotter, work: pathlib.Path) -> None:
    """Owners (odd uids/gids), setuid/setgid/sticky/0600/0000 modes, symlinks (with their own owner and
    mtime), hard links, user.* xattrs (where the filesystem has them), file mtimes and odd names survive
    commit, and changes to them in a child are committed too."""
    with mounted(sn.prepare("probe"), work) as root:
        xattrs = _user_xattrs_supported(root)
    sn.remove("probe")
    long_name = "L" * 255
    l1 = [create_dir("/bin"), create_file("/bin/su", b"#!suid", 0o4755), create_file("/bin/sg", b"#!sgid", 0o2755),
          create_dir("/tmp", 0o1777), create_dir("/shared"), chown("/shared", 0, 50), chmod("/shared", 0o2775),
          create_file("/secret", b"s3cret", 0o600), chown("/secret", 12345, 54321),
          create_file("/nothing", b"none", 0o000), create_file("/empty", b""),
          create_dir("/home/u", 0o700), chown("/home/u", 1000, 1000), create_file("/home/u/f", b"u", 0o640),
          chown("/home/u/f", 65534, 123456789),
          symlink("/etc/passwd", "/abs"), symlink("bin/su", "/rel", mtime=1_500_000_000), symlink("home", "/dirlink"),
          chown("/rel", 777, 888), symlink("missing/target", "/dangling"),
          create_file("/h1", b"hard"), link("/h1", "/h2"), link("/h1", "/home/u/h3"),
          create_file("/old", b"old", mtime=0), create_file("/y2001", b"y", mtime=1_000_000_000),
          create_file("/y2096", b"z", mtime=4_000_000_000),
          create_file("/with space \u00fcn\u00ef", b"odd name"), create_file("/" + long_name, b"long name")]
    if xattrs:
        l1 += [set_xattr("/secret", "user.note", b"hello"), set_xattr("/home", "user.dir", b"d"),
               set_xattr("/h1", "user.bin", bytes(range(256)))]
    l2 = [chown("/secret", 54321, 12345), chmod("/bin/su", 0o4711), chmod("/tmp", 0o1770), chown("/rel", 1, 1),
          set_mtime("/old", 1_234_567_890), chmod("/nothing", 0o444), chown("/home/u", 2000, 2000),
          set_mtime("/dangling", 1_111_111_111)]
    if xattrs:
        l2 += [set_xattr("/secret", "user.note", b"changed"), remove_xattr("/home", "user.dir"),
               set_xattr("/empty", "user.new", b"")]
    check_layers(sn, work, l1, l2, [])


@_register
def check_committed_immutable(sn: Snapshotter, work: pathlib.Path) -> None:
    """Whatever a child does (rewrite in place, append, write through a hard link, chmod, chown, xattrs,
    truncate, delete, rename), its committed parent never changes: a view of it, taken while the child is
    mounted and after the child is committed, has the same checksums; a new child sees the original."""
    base_ops = [create_file("/a", b"A" * 10000), create_dir("/d"), create_file("/d/b", b"bbb"),
                create_file("/h1", b"linked"), link("/h1", "/h2"), symlink("a", "/sym"),
                create_file("/trunc", os.urandom(70000)), create_dir("/gone/deep"), create_file("/gone/deep/f", b"f")]
    commit_layer(sn, work, "base", base_ops)
    flat = _flat(work)
    apply(flat, *base_ops)
    expected = tree_manifest(flat)
    with mounted(sn.prepare("child", "base"), work) as root:
        xattrs = _user_xattrs_supported(root)
        apply(root, write_at("/a", 5000, b"changed"), write_at("/d/b", 3, b"appended"),
              write_at("/h2", 0, b"LINKED"), chmod("/a", 0o600), chown("/d/b", 7, 7),
              create_file("/trunc", b"short"), remove_all("/gone"), rename("/d", "/d2", exdev_fallback=True),
              remove_all("/sym"), symlink("d2", "/sym"))
        if xattrs:
            apply(root, set_xattr("/a", "user.x", b"1"))
        assert_view(sn, work, "base", expected, "the parent while its child is mounted and changed")
    sn.commit("child-c", "child")
    assert_view(sn, work, "base", expected, "the parent after its changed child was committed")
    with mounted(sn.prepare("child2", "base"), work) as root:
        assert_same_tree(expected, root, "a second child of the parent")


@_register
def check_large_file(sn: Snapshotter, work: pathlib.Path) -> None:
    """An 8 MiB file stays byte-exact across a chain: partly overwritten in one child, extended in the next,
    untouched in the last."""
    data = os.urandom(8 * MiB)
    check_layers(sn, work,
                 [create_file("/big", data), create_file("/other", data[:MiB])],
                 [write_at("/big", 3 * MiB + 17, b"\xff" * 4096)],
                 [write_at("/big", 8 * MiB, os.urandom(MiB + 123))],
                 [create_file("/unrelated", b"x")])


@_register
def check_hardlink_across_layers(sn: Snapshotter, work: pathlib.Path) -> None:
    """A hard link made in a child to a file of a lower layer is the same file; a later layer writing
    through one name changes every name; removing one name keeps the others."""
    check_layers(sn, work,
                 [create_file("/f", b"one\n"), create_dir("/sub")],
                 [link("/f", "/g"), link("/f", "/sub/h")],
                 [write_at("/g", 4, b"two\n")],
                 [remove_all("/f")])


@_register
def check_special_files(sn: Snapshotter, work: pathlib.Path) -> None:
    """Fifos, sockets and (as root) character and block device nodes, with their numbers, owners and modes,
    survive commit; renamed, re-moded and removed in a child."""
    l1 = [create_dir("/dev"), mkfifo("/dev/fifo", 0o640), chown("/dev/fifo", 5, 6), mksock("/dev/sock")]
    l2 = [chmod("/dev/fifo", 0o600), mkfifo("/fifo2")]
    if os.geteuid() == 0:
        l1 += [mknod("/dev/null", "c", 1, 3, 0o666), mknod("/dev/loop250", "b", 7, 250, 0o660),
               chown("/dev/loop250", 0, 6)]
        l2 += [rename("/dev/null", "/dev/null2"), remove_all("/dev/loop250"), mknod("/dev/zero", "c", 1, 5, 0o666)]
    l2 += [remove_all("/dev/sock")]
    check_layers(sn, work, l1, l2)


@_register
def check_sparse_file(sn: Snapshotter, work: pathlib.Path) -> None:
    """A sparse file (holes at the start, the middle and the end) reads back the same across a chain,
    including when a child writes into a hole."""
    def sparse(root: pathlib.Path) -> None:
        with open(root / "sparse", "wb") as f:
            f.seek(MiB)
            f.write(b"start")
            f.seek(16 * MiB)
            f.write(b"middle")
            f.truncate(32 * MiB)
        os.utime(root / "sparse", (MTIME, MTIME))
    sparse_op = _op("sparse('/sparse')", sparse)
    check_layers(sn, work, [sparse_op], [write_at("/sparse", 24 * MiB, b"in the hole")])
