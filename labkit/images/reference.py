"""Image references (``name[:tag]``), validated like Docker's reference grammar without a digest.

A name is one or more ``/``-separated path components of lowercase letters and digits joined by
separators (``.``, ``_``, ``__``, one or more ``-``); an optional first component may be a registry host
(``localhost:5000/app``); at most 255 characters, and not 64 hex digits (Docker refuses those: they read
as an image id). A tag matches ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; it defaults to ``latest``.

>>> parse_reference("busybox")
('busybox', 'latest')
>>> normalize("example.org:5000/team/app:v1.2")
'example.org:5000/team/app:v1.2'
"""
from __future__ import annotations

import re

from .. import errors

__all__ = ["parse_reference", "normalize", "TAG_RULE", "NAME_RULE"]

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_NAME_RE = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")

NAME_RULE = ("a name is lowercase letters and digits in '/'-separated components, joined by '.', '_', '__' or "
             "'-', optionally after a registry host[:port]/; at most 255 characters, not 64 hex digits")
TAG_RULE = "a tag is [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"


def parse_reference(ref: str) -> tuple[str, str]:
    """Split and validate ``name[:tag]``; a bad one is ``InvalidArgument`` naming it and the rule.

    >>> parse_reference("localhost:5000/app:1.0")
    ('localhost:5000/app', '1.0')
    """
    if not isinstance(ref, str) or not ref:
        raise errors.InvalidArgument(f"image reference {ref!r}", "is empty", fix=f"write name[:tag]; {NAME_RULE}")
    if "@" in ref:
        raise errors.InvalidArgument(f"image reference {ref!r}", "has a digest, which labkit does not use",
                                     fix="write name[:tag]")
    name, tag = ref, "latest"
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1:]
    if not _TAG_RE.match(tag):
        raise errors.InvalidArgument(f"tag {tag!r} in {ref!r}", "is not a valid tag", fix=TAG_RULE)
    if len(name) > 255 or not _NAME_RE.match(name):
        raise errors.InvalidArgument(f"image name {name!r} in {ref!r}", "is not a valid name", fix=NAME_RULE)
    if _HEX64_RE.match(name):
        raise errors.InvalidArgument(f"image name {name!r} in {ref!r}", "is 64 hex digits, which reads as an image id",
                                     fix="choose a name that is not an id")
    return name, tag


def normalize(ref: str) -> str:
    """``name:tag`` with the default tag filled in.

    >>> normalize("app")
    'app:latest'
    """
    name, tag = parse_reference(ref)
    return f"{name}:{tag}"
