"""A copy-on-write B-tree with reference-counted, shared nodes (persistent-data's ``dm_btree``).

Keys are u64. Internal nodes hold the lowest key of each child and the child's block; leaves hold the
values. Every change goes top-down through :meth:`TransactionManager.shadow`, so a path shared with
another tree (a snapshot) is copied first and the copy's children gain a reference; nodes already new in
this transaction are changed in place. Full nodes are split on the way down (the root splits *beneath*
itself so that its block number stays the same for the caller).

Removal rebalances like the kernel's: an underfull node (below a quarter full) borrows entries from a
sibling or merges with it, and a root left with one child absorbs it, so trees shrink again.

>>> from labkit.thin.spacemap import SpaceMap
>>> from labkit.thin.metadata import TransactionManager, KIND_MAPPING
>>> tm = TransactionManager(-1, SpaceMap(64), SpaceMap(64), 4)
>>> root = empty_tree(tm, KIND_MAPPING, 1)
>>> for k in range(10):
...     tm.data_sm.inc(k); root, _ = insert(tm, root, k, k << 24)
>>> lookup(tm, root, 7)[0] >> 24, depth(tm, root)
(7, 3)
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import cast

from .metadata import KIND_MAPPING, Node, TransactionManager

#: a leaf's value: one word ``(data block << 24) | time`` in a mapping tree (``KIND_MAPPING``), a tuple
#: of DeviceDetails words in the device tree (which kind a tree is, its caller knows: see
#: :func:`mapping_lookup` and :func:`mapping_items`)
Value = int | tuple[int, ...]


def empty_tree(tm: TransactionManager, kind: int, width: int) -> int:
    """Allocate an empty leaf and return its block (the tree's root)."""
    return tm.new_node(True, kind, width).block


def lookup(tm: TransactionManager, root: int, key: int) -> tuple[Value | None, bool]:
    """Return ``(value, shared)``: the value (None if absent) and whether any node on the path has
    more than one reference (then the value is reachable from another tree too)."""
    counts = tm.meta_sm.counts
    node = tm.read(root)
    shared = counts[root] > 1
    while not node.leaf:
        i = bisect_right(node.keys, key) - 1
        if i < 0:
            return None, shared
        b = node.values[i]
        if counts[b] > 1:
            shared = True
        node = tm.read(b)
    keys = node.keys
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        return node.values[i], shared
    return None, shared


def mapping_lookup(tm: TransactionManager, root: int, key: int) -> tuple[int | None, bool]:
    """:func:`lookup` in a mapping tree, whose values are ints."""
    return cast("tuple[int | None, bool]", lookup(tm, root, key))


def _dec_value(tm: TransactionManager, node: Node, value: Value) -> None:
    if node.kind == KIND_MAPPING:
        tm.data_sm.dec(cast(int, value) >> 24)
    else:
        del_tree(tm, cast("tuple[int, ...]", value)[0])


def _split(tm: TransactionManager, node: Node) -> Node:
    """Move the upper half of ``node`` into a new sibling and return the sibling."""
    sib = tm.new_node(node.leaf, node.kind, node.width)
    half = len(node.keys) // 2
    sib.keys = node.keys[half:]
    sib.values = node.values[half:]
    del node.keys[half:]
    del node.values[half:]
    return sib


def _split_beneath(tm: TransactionManager, node: Node) -> None:
    """Split a full root into two new children; the root becomes internal and keeps its block."""
    left = tm.new_node(node.leaf, node.kind, node.width)
    right = tm.new_node(node.leaf, node.kind, node.width)
    half = len(node.keys) // 2
    left.keys, right.keys = node.keys[:half], node.keys[half:]
    left.values, right.values = node.values[:half], node.values[half:]
    node.leaf = False
    node.keys = [left.keys[0], right.keys[0]]
    node.values = [left.block, right.block]


def insert(tm: TransactionManager, root: int, key: int, value: Value,
           *, dec_old: bool = True) -> tuple[int, Value | None]:
    """Insert or replace ``key``; return ``(new_root, old_value)``.

    The caller has already taken the reference that ``value`` carries; a replaced value loses its
    reference unless ``dec_old`` is False.
    """
    node = tm.shadow(root)
    new_root = node.block
    if len(node.keys) >= tm.capacity(node):
        _split_beneath(tm, node)
    while not node.leaf:
        keys = node.keys
        i = bisect_right(keys, key) - 1
        if i < 0:
            i = 0
            keys[0] = key
        child = tm.shadow(node.values[i])
        node.values[i] = child.block
        if len(child.keys) >= tm.capacity(child):
            sib = _split(tm, child)
            keys.insert(i + 1, sib.keys[0])
            node.values.insert(i + 1, sib.block)
            if key >= sib.keys[0]:
                child = sib
        node = child
    keys = node.keys
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        old = node.values[i]
        node.values[i] = value
        if dec_old and old != value:
            _dec_value(tm, node, old)
        return new_root, old
    keys.insert(i, key)
    node.values.insert(i, value)
    return new_root, None


def remove(tm: TransactionManager, root: int, key: int, *, dec: bool = True) -> tuple[int, Value | None]:
    """Remove ``key`` (dropping its value's reference unless ``dec`` is False); return
    ``(new_root, old_value)``."""
    value, _ = lookup(tm, root, key)
    if value is None:
        return root, None
    node = tm.shadow(root)
    new_root = node.block
    path: list[tuple[Node, int]] = []
    while not node.leaf:
        i = bisect_right(node.keys, key) - 1
        child = tm.shadow(node.values[i])
        node.values[i] = child.block
        path.append((node, i))
        node = child
    i = bisect_left(node.keys, key)
    old = node.values[i]
    del node.keys[i]
    del node.values[i]
    if dec:
        _dec_value(tm, node, old)
    # rebalance bottom up, as the kernel does: an empty node goes, an underfull one borrows from or
    # merges with a sibling (shadowed first, so a sibling shared with a snapshot is copied)
    while path:
        parent, j = path.pop()
        _rebalance(tm, parent, j, node)
        node = parent
    # a root left with a single child takes the child's contents (the root keeps its block number)
    while not node.leaf and len(node.keys) == 1:
        child = tm.shadow(node.values[0])
        node.leaf, node.keys, node.values = child.leaf, list(child.keys), list(child.values)
        tm.release(child.block)
    if not node.keys:
        node.leaf = True
    return new_root, old


def _rebalance(tm: TransactionManager, parent: Node, j: int, node: Node) -> None:
    """Fix child ``j`` of ``parent`` (``node``, already shadowed) after a removal beneath it."""
    if not node.keys:
        tm.release(node.block)
        del parent.keys[j]
        del parent.values[j]
        return
    cap = tm.capacity(node)
    if len(node.keys) >= max(2, cap // 4) or len(parent.keys) < 2:
        return
    k = j + 1 if j + 1 < len(parent.keys) else j - 1
    sib = tm.shadow(parent.values[k])
    parent.values[k] = sib.block
    left, right, li = (node, sib, j) if k > j else (sib, node, k)
    keys = left.keys + right.keys
    values = left.values + right.values
    if len(keys) <= 3 * cap // 4:  # merge into the left node
        left.keys, left.values = keys, values
        tm.release(right.block)
        del parent.keys[li + 1]
        del parent.values[li + 1]
    else:  # share the entries evenly
        h = len(keys) // 2
        left.keys, right.keys = keys[:h], keys[h:]
        left.values, right.values = values[:h], values[h:]
        parent.keys[li + 1] = right.keys[0]


def del_tree(tm: TransactionManager, root: int) -> None:
    """Drop one reference to a tree; nodes reaching zero release their children and values."""
    stack = [root]
    while stack:
        b = stack.pop()
        node = tm.read(b)
        if tm.release(b) != 0:
            continue
        if not node.leaf:
            stack.extend(node.values)
        elif node.kind == KIND_MAPPING:
            dsm = tm.data_sm
            for v in node.values:
                dsm.dec(v >> 24)
        else:
            stack.extend(v[0] for v in node.values)


def items(tm: TransactionManager, root: int, lo: int = 0) -> Iterator[tuple[int, Value]]:
    """All ``(key, value)`` pairs with key >= ``lo``, in key order."""
    node = tm.read(root)
    if node.leaf:
        i = bisect_left(node.keys, lo)
        yield from zip(node.keys[i:], node.values[i:])
        return
    start = max(bisect_right(node.keys, lo) - 1, 0)
    for b in node.values[start:]:
        yield from items(tm, b, lo)


def mapping_items(tm: TransactionManager, root: int, lo: int = 0) -> Iterator[tuple[int, int]]:
    """:func:`items` of a mapping tree, whose values are ints."""
    return cast("Iterator[tuple[int, int]]", items(tm, root, lo))


def depth(tm: TransactionManager, root: int) -> int:
    """Number of levels (1 for a single leaf)."""
    d = 1
    node = tm.read(root)
    while not node.leaf:
        node = tm.read(node.values[0])
        d += 1
    return d
