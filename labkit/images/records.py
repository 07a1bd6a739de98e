"""What the image store answers with: frozen records of flat fields (:mod:`labkit._sys.record`: classes
that behave as frozen dataclasses and cost ~50x less to define).

Every field is a ``str``, ``int``, ``float``, ``bool``, ``None`` or a tuple of ``str``, so a list of
records becomes a table with ``pd.DataFrame([record.asdict(r) for r in records])`` (the Lab does
that; this package never imports pandas). Ids are always the full 64 hex digits in ``id`` and the first
12 in ``short_id``; sizes are bytes; times are seconds since the epoch.

This module defines :class:`ImageConfig` (what ``labkit run`` reads) and names every other record, which
lives where it is made and is imported on first use (a ``labkit run`` needs none of them):
:mod:`labkit.images.listing` for what looking at the store answers (``ImageInfo``, ``HistoryEntry``,
``DfRow``, ``TreeNode``, ``Requirements``),
:mod:`labkit.images.reports` for what changing it answers (``Removal``, ``RmiReport``, ``PruneReport``,
``CheckReport``, ``SaveReport``, ``BuildStep``, ``BuildResult``).

>>> from labkit.images.records import PruneReport, Removal
>>> r = Removal(id="ab" * 32, short_id="ab" * 6, tags=("app:v1",), freed=4096)
>>> PruneReport(removals=(r,)).freed, PruneReport(removals=(r,)).deleted == ("ab" * 32,)
(4096, True)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._sys import lazy
from .._sys.record import Record

if TYPE_CHECKING:
    from .listing import DfRow, HistoryEntry, ImageInfo, Requirements, TreeNode
    from .reports import BuildResult, BuildStep, CheckReport, PruneReport, Removal, RmiReport, SaveReport

__all__ = ["ImageInfo", "HistoryEntry", "Removal", "RmiReport", "PruneReport", "DfRow", "TreeNode",
           "Requirements", "CheckReport", "ImageConfig", "SaveReport", "BuildStep", "BuildResult"]

#: record -> the module that defines it
_WHERE = {**{n: "listing" for n in ("ImageInfo", "HistoryEntry", "DfRow", "TreeNode", "Requirements")},
          **{n: "reports" for n in ("Removal", "RmiReport", "PruneReport", "CheckReport", "SaveReport", "BuildStep",
                                    "BuildResult")}}


__getattr__, __dir__ = lazy.attributes("labkit.images", _WHERE, globals())


class ImageConfig(Record):
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
    def from_oci(cls, config: object) -> ImageConfig:
        """From the ``config`` object of an OCI / Docker image config; wrong types are dropped, not trusted."""
        if not isinstance(config, dict):
            return cls()

        def strs(v: object) -> tuple[str, ...]:
            return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()
        labels, workdir, user = config.get("Labels"), config.get("WorkingDir"), config.get("User")
        return cls(env=strs(config.get("Env")), cmd=strs(config.get("Cmd")),
                   entrypoint=strs(config.get("Entrypoint")),
                   workdir=workdir if isinstance(workdir, str) else "",
                   user=user if isinstance(user, str) else "",
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
    def from_json(cls, data: object) -> ImageConfig:
        """The inverse of :meth:`to_json`; anything malformed reads as the empty config."""
        if not isinstance(data, dict):
            return cls()

        def strs(v: object) -> tuple[str, ...]:
            return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()
        return cls(env=strs(data.get("env")), cmd=strs(data.get("cmd")), entrypoint=strs(data.get("entrypoint")),
                   workdir=str(data.get("workdir") or ""), user=str(data.get("user") or ""),
                   labels=strs(data.get("labels")))
