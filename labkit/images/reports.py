"""What changing the image store answers: removals, ``rmi``/``prune``/``check`` reports, what ``save``
wrote, what ``build`` made (frozen records of flat fields; see :mod:`labkit.images.records`, which
names them all).

>>> RmiReport("app:v1", "ab" * 32, ("app:v1",), (), ()).freed
0
"""
from __future__ import annotations

from collections.abc import Iterator

from .._sys.record import Record

__all__ = ["Removal", "RmiReport", "PruneReport", "CheckReport", "SaveReport", "BuildStep", "BuildResult"]


class Removal(Record):
    """One image deleted: the tags it still had and the bytes its layer freed (``usage`` just before)."""

    id: str
    short_id: str
    tags: tuple[str, ...]
    freed: int


class RmiReport(Record):
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


class PruneReport(Record):
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


class CheckReport(Record):
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


class SaveReport(Record):
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


class BuildStep(Record):
    """One recipe step of a build: its number, ``<file>:<line>``, the instruction as run (variables
    substituted), the image it left, whether that came from the cache, and its seconds."""

    number: int
    recipe: str
    instruction: str
    image: str
    cached: bool
    seconds: float


class BuildResult(Record):
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
