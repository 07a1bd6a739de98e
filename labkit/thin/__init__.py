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

from .check import CheckReport
from .client import DaemonInfo, PoolClient
from .metadata import MetadataError
from .pool import BlockInfo, Device, DeviceDetails, Pool, PoolFull, Status, Usage

__all__ = ["Pool", "Device", "DeviceDetails", "Status", "Usage", "BlockInfo", "CheckReport", "PoolFull",
           "MetadataError", "PoolClient", "DaemonInfo"]
