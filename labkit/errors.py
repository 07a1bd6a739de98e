"""labkit's error tree.

Every error labkit raises on purpose is a :class:`LabkitError`; its message is one line that names the
object and, where there is one, the fix. The CLI prints that line and exits non-zero instead of a
traceback.

::

    LabkitError
    ├── NotFound            the named snapshot / image / container / pool device does not exist
    ├── AlreadyExists       the key / name / tag is taken
    ├── FailedPrecondition  the object is in the wrong state (has children, is a view, is busy, pool full)
    ├── InvalidArgument     the caller's input is malformed (bad size string, bad tag, hostile archive)
    └── Unsupported         the host cannot do it (missing binary, filesystem, kernel feature)

>>> from labkit.errors import NotFound
>>> str(NotFound("snapshot 'base'", fix="list them with `labkit snapshots`"))
"snapshot 'base' not found: list them with `labkit snapshots`"
"""
from __future__ import annotations


class LabkitError(Exception):
    """Base of labkit's errors: a one-line message naming the object and the fix."""

    what = "error"

    def __init__(self, subject: str, detail: str | None = None, *, fix: str | None = None) -> None:
        self.subject = subject
        self.detail = detail
        self.fix = fix
        msg = subject if detail is None else f"{subject}: {detail}"
        if fix:
            msg = f"{msg}: {fix}"
        super().__init__(msg)


class NotFound(LabkitError):
    """The named object does not exist."""

    def __init__(self, subject: str, detail: str | None = "not found", *, fix: str | None = None) -> None:
        if detail == "not found":
            super().__init__(f"{subject} not found", None, fix=fix)
        else:
            super().__init__(subject, detail, fix=fix)


class AlreadyExists(LabkitError):
    """The key, name or tag is already taken."""

    def __init__(self, subject: str, detail: str | None = None, *, fix: str | None = None) -> None:
        super().__init__(f"{subject} already exists" if detail is None else subject, detail, fix=fix)


class FailedPrecondition(LabkitError):
    """The object exists but is in a state that forbids the operation."""


class InvalidArgument(LabkitError, ValueError):
    """The caller's input is malformed."""


class Unsupported(LabkitError):
    """The host lacks what the operation needs (a binary, a filesystem, a kernel feature)."""


__all__ = ["LabkitError", "NotFound", "AlreadyExists", "FailedPrecondition", "InvalidArgument", "Unsupported"]
