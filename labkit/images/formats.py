"""The archive formats and layer compressions :func:`labkit.images.save.save` writes, named here on their
own so that the CLI can offer them as choices without importing the writer (and its tar, gzip and
digest machinery) for every verb.

>>> FORMATS[0], COMPRESSIONS
('oci-archive', ('gzip', 'none'))
"""
from __future__ import annotations

__all__ = ["FORMATS", "COMPRESSIONS"]

#: what ``save(format=...)`` writes; the first is the default
FORMATS = ("oci-archive", "docker-archive", "rootfs")
#: layer compressions of ``save(compress=...)``
COMPRESSIONS = ("gzip", "none")
