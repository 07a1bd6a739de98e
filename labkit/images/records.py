"""What the image store answers with: frozen dataclasses of flat fields.

Every field is a ``str``, ``int``, ``float``, ``bool``, ``None`` or a tuple of ``str``, so a list of
records becomes a table with ``pd.DataFrame([dataclasses.asdict(r) for r in records])`` (the Lab does
that; this package never imports pandas). Ids are always the full 64 hex digits in ``id`` and the first
12 in ``short_id``; sizes are bytes; times are seconds since the epoch.

>>> r = Removal(id="ab" * 32, short_id="ab" * 6, tags=("app:v1",), freed=4096)
>>> PruneReport(removals=(r,)).freed, PruneReport(removals=(r,)).deleted == ("ab" * 32,)
(4096, True)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

__all__ = ["ImageInfo", "HistoryEntry", "Removal", "RmiReport", "PruneReport", "DfRow", "TreeNode",
           "Requirements", "CheckReport", "ImageConfig", "SaveReport", "BuildStep", "BuildResult"]


@dataclass(frozen=True)
class ImageConfig:
    """The run-time defaults an image carries (the OCI image config's ``config`` object, flattened).

    ``env`` holds ``KEY=value`` strings, ``labels`` ``key=value`` strings (sorted); an empty tuple or
    string means "not set".

    >>> ImageConfig.from_oci({"Env": ["PATH=/bin"], "Cmd": ["sh"], "Labels": {"b": "2", "a": "1"}}).labels
    ('a=1', 'b=2')
    """

    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    labels: tuple[str, ...] = ()

    @classmethod
    def from_oci(cls, config: object) -> "ImageConfig":
        """From the ``config`` object of an OCI / Docker image config; wrong types are dropped, not trusted."""
        if not isinstance(config, dict):
            return cls()

        def strs(v: object) -> tuple[str, ...]:
            return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()
        labels = config.get("Labels")
        return cls(env=strs(config.get("Env")), cmd=strs(config.get("Cmd")),
                   entrypoint=strs(config.get("Entrypoint")),
                   workdir=config.get("WorkingDir") if isinstance(config.get("WorkingDir"), str) else "",
                   user=config.get("User") if isinstance(config.get("User"), str) else "",
                   labels=tuple(sorted(f"{k}={v}" for k, v in labels.items()
                                       if isinstance(k, str) and isinstance(v, str)))
                   if isinstance(labels, dict) else ())

    def to_oci(self) -> dict[str, object]:
        """The OCI image config's ``config`` object (fields left unset are omitted); the inverse of
        :meth:`from_oci`.

        >>> ImageConfig(cmd=("sh",), labels=("a=1",)).to_oci()
        {'Cmd': ['sh'], 'Labels': {'a': '1'}}
        """
        out: dict[str, object] = {}
        for key, value in (("Env", list(self.env)), ("Cmd", list(self.cmd)), ("Entrypoint", list(self.entrypoint)),
                           ("WorkingDir", self.workdir), ("User", self.user),
                           ("Labels", dict(x.split("=", 1) for x in self.labels if "=" in x))):
            if value:
                out[key] = value
        return out

    def to_json(self) -> dict[str, object]:
        """The form kept in ``images.db`` (lists, so that ``json`` round-trips it)."""
        return {"env": list(self.env), "cmd": list(self.cmd), "entrypoint": list(self.entrypoint),
                "workdir": self.workdir, "user": self.user, "labels": list(self.labels)}

    @classmethod
    def from_json(cls, data: object) -> "ImageConfig":
        """The inverse of :meth:`to_json`; anything malformed reads as the empty config."""
        if not isinstance(data, dict):
            return cls()

        def strs(v: object) -> tuple[str, ...]:
            return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()
        return cls(env=strs(data.get("env")), cmd=strs(data.get("cmd")), entrypoint=strs(data.get("entrypoint")),
                   workdir=str(data.get("workdir") or ""), user=str(data.get("user") or ""),
                   labels=strs(data.get("labels")))


@dataclass(frozen=True)
class ImageInfo:
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


@dataclass(frozen=True)
class HistoryEntry:
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


@dataclass(frozen=True)
class Removal:
    """One image deleted: the tags it still had and the bytes its layer freed (``usage`` just before)."""

    id: str
    short_id: str
    tags: tuple[str, ...]
    freed: int


@dataclass(frozen=True)
class RmiReport:
    """What ``rmi(ref)`` did: tags removed, images deleted, and (with ``force``) what still holds it."""

    ref: str
    id: str
    untagged: tuple[str, ...]
    removals: tuple[Removal, ...]
    kept_by: tuple[str, ...]

    @property
    def deleted(self) -> tuple[str, ...]:
        """Ids of the images deleted."""
        return tuple(r.id for r in self.removals)

    @property
    def freed(self) -> int:
        """Bytes freed in all."""
        return sum(r.freed for r in self.removals)


@dataclass(frozen=True)
class PruneReport:
    """What ``prune()`` deleted (or, ``dry_run``, would delete), one :class:`Removal` each, in order."""

    removals: tuple[Removal, ...] = ()
    dry_run: bool = False

    @property
    def deleted(self) -> tuple[str, ...]:
        """Ids of the images deleted (with ``dry_run``: that would be)."""
        return tuple(r.id for r in self.removals)

    @property
    def freed(self) -> int:
        """Bytes freed in all (with ``dry_run``: each layer's usage now, an estimate)."""
        return sum(r.freed for r in self.removals)


@dataclass(frozen=True)
class DfRow:
    """Disk use of one image or container (``df()``); bytes. ``name`` is an image's short id or a
    container's name; ``snapshot`` the snapshot that holds its own layer."""

    kind: str
    name: str
    snapshot: str
    total: int
    shared: int
    exclusive: int
    reclaimable: int


@dataclass(frozen=True)
class TreeNode:
    """One image in the lineage tree, with its child images and the containers on it; ``recipe`` is
    ``<file>:<line>`` of the recipe step that made it (empty: an import or a hand commit)."""

    id: str
    short_id: str
    tags: tuple[str, ...]
    size: int | None
    exclusive: int
    created_by: str
    containers: tuple[str, ...]
    children: tuple["TreeNode", ...]
    recipe: str = ""


@dataclass(frozen=True)
class Requirements:
    """What depends on an image, transitively: image ids and container names."""

    images: tuple[str, ...]
    containers: tuple[str, ...]


@dataclass(frozen=True)
class CheckReport:
    """``check()``: the inconsistencies found, and for each (same index) the repair done
    (``repair=True``), proposed (``would ...``), failed (``not repaired (...): why``) or declined
    (``none: ...``).

    >>> r = CheckReport(("image 0123 has no snapshot",), ("would remove the row of image 0123",))
    >>> r.ok, list(r.rows())
    (False, [('image 0123 has no snapshot', 'would remove the row of image 0123')])
    """

    problems: tuple[str, ...] = ()
    repairs: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.problems

    @property
    def unrepaired(self) -> tuple[str, ...]:
        """The problems whose repair failed or was declined."""
        return tuple(p for p, r in zip(self.problems, self.repairs) if r.startswith(("not repaired", "none:")))

    def rows(self) -> Iterator[tuple[str, str]]:
        """(problem, repair) pairs."""
        return zip(self.problems, self.repairs)


@dataclass(frozen=True)
class SaveReport:
    """What ``save()`` wrote: the archive, the image and its name in it, and per layer (base first) the
    blob digest and the diff_id (sha256 of the uncompressed tar). Images whose content equals their
    parent's add no layer (``empty_layers`` counts them; the config's history marks them).

    >>> SaveReport("/tmp/a.tar", "oci-archive", "ab" * 32, "ab" * 6, "app:v1", 2048, ("sha256:1",), ("sha256:2",),
    ...            "sha256:3", "sha256:4", 0).layers
    ('sha256:1',)
    """

    path: str
    format: str
    id: str
    short_id: str
    name: str
    bytes: int
    layers: tuple[str, ...]
    diff_ids: tuple[str, ...]
    config_digest: str
    manifest_digest: str
    empty_layers: int


@dataclass(frozen=True)
class BuildStep:
    """One recipe step of a build: its number, ``<file>:<line>``, the instruction as run (variables
    substituted), the image it left, whether that came from the cache, and its seconds."""

    number: int
    recipe: str
    instruction: str
    image: str
    cached: bool
    seconds: float


@dataclass(frozen=True)
class BuildResult:
    """What ``build()`` made: the final image (``id``), the tag it got, and every step."""

    id: str
    short_id: str
    tag: str
    steps: tuple[BuildStep, ...]
    seconds: float

    @property
    def cached(self) -> int:
        """How many steps came from the cache."""
        return sum(s.cached for s in self.steps)
