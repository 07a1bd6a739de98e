"""What looking at the image store answers: one image, a history entry, a row of ``df``, a node of the
lineage tree, what depends on an image (frozen records of flat fields; see
:mod:`labkit.images.records`, which names them all).

>>> Requirements(images=(), containers=("web",)).containers
('web',)
"""
from __future__ import annotations

from .._sys.record import Record
from .records import ImageConfig

__all__ = ["ImageInfo", "HistoryEntry", "DfRow", "TreeNode", "Requirements"]


class ImageInfo(Record):
    """One image (``images()``, ``inspect()``).

    ``size`` is the apparent content of its root filesystem (None: not measured yet, e.g. a commit whose
    measurement failed; ``check(repair=True)`` measures it); ``exclusive`` is the snapshotter's usage of
    its own layer (what that means per backend: docs/images.md). ``children`` are image ids,
    ``containers`` the names of the containers (active or view snapshots) on it. ``env`` .. ``labels``
    are its :class:`ImageConfig`. ``recipe`` is ``<file>:<line>`` of the recipe step that made it
    (``labkit build``), empty for an import or a hand commit.
    """

    id: str
    short_id: str
    tags: tuple[str, ...]
    parent: str | None
    created: float
    created_by: str
    comment: str
    size: int | None
    exclusive: int
    snapshot: str
    backend: str
    children: tuple[str, ...]
    containers: tuple[str, ...]
    removal_pending: bool
    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    labels: tuple[str, ...] = ()
    recipe: str = ""

    @property
    def config(self) -> ImageConfig:
        """The run-time defaults as one object."""
        return ImageConfig(self.env, self.cmd, self.entrypoint, self.workdir, self.user, self.labels)


class HistoryEntry(Record):
    """One image of a ``history()`` chain (newest first); ``recipe`` as in :class:`ImageInfo`."""

    id: str
    short_id: str
    tags: tuple[str, ...]
    parent: str | None
    created: float
    created_by: str
    comment: str
    size: int | None
    exclusive: int
    recipe: str = ""


class DfRow(Record):
    """Disk use of one image or container (``df()``); bytes. ``name`` is an image's short id or a
    container's name; ``snapshot`` the snapshot that holds its own layer."""

    kind: str
    name: str
    snapshot: str
    total: int
    shared: int
    exclusive: int
    reclaimable: int


class TreeNode(Record):
    """One image in the lineage tree, with its child images and the containers on it; ``recipe`` is
    ``<file>:<line>`` of the recipe step that made it (empty: an import or a hand commit)."""

    id: str
    short_id: str
    tags: tuple[str, ...]
    size: int | None
    exclusive: int
    created_by: str
    containers: tuple[str, ...]
    children: tuple[TreeNode, ...]
    recipe: str = ""


class Requirements(Record):
    """What depends on an image, transitively: image ids and container names."""

    images: tuple[str, ...]
    containers: tuple[str, ...]
