"""Lineage arithmetic over plain data: the ``df`` table, the tree and its text.

The image store gathers, under its lock, each image's parent and own-layer usage and the containers on
each image; these functions only compute, so they are tested without a snapshotter.

>>> imgs = {"a" * 64: None, "b" * 64: "a" * 64}
>>> rows = df_rows(imgs, {"a" * 64: 100, "b" * 64: 10}, {"b" * 64: [("web", "ctr-web", 5)]})
>>> [(r.name, r.total, r.shared, r.reclaimable) for r in rows]
[('aaaaaaaaaaaa', 100, 100, 0), ('bbbbbbbbbbbb', 110, 110, 0), ('web', 115, 110, 5)]
"""
from __future__ import annotations

import os

from .records import DfRow, TreeNode

__all__ = ["df_rows", "render_tree", "chain"]


def chain(image: str | None, parent: dict[str, str | None]) -> list[str]:
    """``image`` and its ancestors, newest first."""
    out: list[str] = []
    seen: set[str] = set()
    while image and image not in seen:
        seen.add(image)
        out.append(image)
        image = parent.get(image)
    return out


def df_rows(parent: dict[str, str | None], layer: dict[str, int],
            containers: dict[str, list[tuple[str, str, int]]]) -> list[DfRow]:
    """One :class:`DfRow` per image (in ``parent``'s order) and per container.

    ``parent``: image id -> parent id; ``layer``: image id -> usage of its own layer; ``containers``:
    image id -> [(name, snapshot, usage of its own layer)]. ``total`` = own layer + the layers of the
    chain; a layer is *shared* for an object when another image or container also has it in its chain;
    ``exclusive = total - shared``; ``reclaimable`` = what removing the object now frees.
    """
    kids: dict[str, int] = {}
    for p in parent.values():
        if p:
            kids[p] = kids.get(p, 0) + 1
    objs: list[tuple[str, str, str, int, list[str], bool]] = []   # kind, name, snapshot, own, chain, in use
    for i in parent:
        objs.append(("image", i[:12], f"img-{i}", 0, chain(i, parent), bool(kids.get(i) or containers.get(i))))
    for i, cl in containers.items():
        for name, snap, own in cl:
            objs.append(("container", name, snap, own, chain(i, parent), False))
    holders: dict[str, int] = {}
    for o in objs:
        for i in o[4]:
            holders[i] = holders.get(i, 0) + 1
    out = []
    for kind, name, snap, own, ch, used in objs:
        total = own + sum(layer.get(i, 0) for i in ch)
        shared = sum(layer.get(i, 0) for i in ch if holders[i] > 1)
        reclaim = (0 if used else layer.get(ch[0], 0)) if kind == "image" else own
        out.append(DfRow(kind=kind, name=name, snapshot=snap, total=total, shared=shared,
                         exclusive=total - shared, reclaimable=reclaim))
    return out


def render_tree(nodes: list[TreeNode] | tuple[TreeNode, ...]) -> str:
    """The lineage as indented text, one image per line with its tags, sizes and containers; an image a
    recipe step made says which (``recipe=Labfile:3``), an import or a hand commit says nothing.

    >>> leaf = TreeNode("b" * 64, "b" * 12, (), 5, 5, "x", ("web",), (), recipe="/src/Labfile:3")
    >>> print(render_tree([TreeNode("a" * 64, "a" * 12, ("base:1",), 10, 10, "y", (), (leaf,))]))
    aaaaaaaaaaaa base:1 size=10 exclusive=10
    └─ bbbbbbbbbbbb <none> size=5 exclusive=5 recipe=Labfile:3 containers=web
    """
    lines: list[str] = []

    def draw(n: TreeNode, prefix: str, last: bool, top: bool) -> None:
        tags = ",".join(n.tags) or "<none>"
        head = "" if top else ("└─ " if last else "├─ ")
        size = "?" if n.size is None else n.size
        lines.append(f"{prefix}{head}{n.short_id} {tags} size={size} exclusive={n.exclusive}"
                     + (f" recipe={os.path.basename(n.recipe)}" if n.recipe else "")
                     + (f" containers={','.join(n.containers)}" if n.containers else ""))
        sub = prefix + ("" if top else ("   " if last else "│  "))
        for j, k in enumerate(n.children):
            draw(k, sub, j == len(n.children) - 1, False)
    for n in nodes:
        draw(n, "", True, True)
    return "\n".join(lines)
