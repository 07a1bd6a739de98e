"""labkit's userspace model of device-mapper thin provisioning.

A :class:`Pool` is a directory with a data file and a metadata file. Thin devices map virtual blocks to
data blocks through reference-counted copy-on-write B-trees; snapshots share their origin's tree; the
metadata is committed in two phases so that a crash reopens to the last commit. A :class:`PoolClient`
offers the same methods through the pool's daemon, which exports the devices over FUSE for loop devices.
See docs/thin-pool.md.

>>> import tempfile, os
>>> from labkit.thin import Pool
>>> with Pool.create(os.path.join(tempfile.mkdtemp(), "pool"), data_size="8M") as pool:
...     pool.create_thin(1, "10G")
...     pool.device(1).write(0, b"base")
...     pool.create_snap(2, 1)
...     pool.device(2).write(0, b"snap")
...     pool.device(1).read(0, 4), pool.device(2).read(0, 4), pool.check().ok
(b'base', b'snap', True)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._sys import lazy

if TYPE_CHECKING:
    from .check import CheckReport
    from .client import DaemonInfo, PoolClient
    from .metadata import MetadataError
    from .pool import BlockInfo, Device, DeviceDetails, Pool, PoolFull, Status, Usage

__all__ = ["Pool", "Device", "DeviceDetails", "Status", "Usage", "BlockInfo", "CheckReport", "PoolFull",
           "MetadataError", "PoolClient", "DaemonInfo"]

#: public name -> the module that defines (or re-exports) it; imported on first use (PEP 562), so that
#: ``from labkit.thin.client import PoolClient`` does not load the pool, its XML and its checker too
_WHERE = {"Pool": "pool", "Device": "pool", "DeviceDetails": "pool", "Status": "pool", "Usage": "pool",
          "BlockInfo": "pool", "PoolFull": "pool", "CheckReport": "check", "MetadataError": "metadata",
          "PoolClient": "client", "DaemonInfo": "client"}

__getattr__, __dir__ = lazy.attributes(__name__, _WHERE, globals())
