"""thin_dump's XML: write a pool's metadata out, and build a pool from it.

The format (thin-provisioning-tools ``xml_format.cc``)::

    <superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128"
                nr_data_blocks="16384">
      <device dev_id="1" mapped_blocks="3" transaction="0" creation_time="0" snap_time="1">
        <range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
        <single_mapping origin_block="7" data_block="9" time="1"/>
      </device>
    </superblock>

``data_block_size`` is in 512-byte sectors. The XML says nothing about sharing of tree nodes, so a
restored pool has one tree per device and data blocks counted once per mapping (as ``thin_restore``
does); it also carries no virtual sizes, hence ``virtual_sizes``.

>>> import io, tempfile, os
>>> from labkit.thin import Pool
>>> with Pool.create(os.path.join(tempfile.mkdtemp(), "p"), data_size="1M") as p:
...     p.create_thin(1, "1M"); p.device(1).write(0, b"x" * 131072)
...     buf = io.StringIO(); p.dump_xml(buf)
>>> print(buf.getvalue().splitlines()[2].strip())
<range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import IO, TYPE_CHECKING, Mapping

from ..errors import InvalidArgument
from ..units import parse_size
from . import btree
from .metadata import KIND_MAPPING

if TYPE_CHECKING:
    from .pool import Pool

SECTOR = 512


def dump_xml(pool: "Pool", fp: IO[str]) -> None:
    """Write ``pool`` (its current in-memory state) to ``fp`` as thin_dump XML."""
    sb = pool.sb
    fp.write(f'<superblock uuid="" time="{sb.time}" transaction="{sb.transaction_id}" flags="0" version="2" '
             f'data_block_size="{pool.block_size // SECTOR}" nr_data_blocks="{sb.nr_data_blocks}">\n')
    for dev_id in sorted(pool._devs):
        d = pool._devs[dev_id]
        fp.write(f'  <device dev_id="{dev_id}" mapped_blocks="{d.mapped_blocks}" transaction="{d.transaction_id}" '
                 f'creation_time="{d.creation_time}" snap_time="{d.snap_time}">\n')
        run: list[int] | None = None  # origin, data, length, time

        def emit(r: list[int]) -> None:
            if r[2] == 1:
                fp.write(f'    <single_mapping origin_block="{r[0]}" data_block="{r[1]}" time="{r[3]}"/>\n')
            else:
                fp.write(f'    <range_mapping origin_begin="{r[0]}" data_begin="{r[1]}" length="{r[2]}" '
                         f'time="{r[3]}"/>\n')

        for k, v in btree.items(pool.tm, d.root):
            db, t = v >> 24, v & 0xFFFFFF  # type: ignore[operator]
            if run is not None and k == run[0] + run[2] and db == run[1] + run[2] and t == run[3]:
                run[2] += 1
                continue
            if run is not None:
                emit(run)
            run = [k, db, 1, t]
        if run is not None:
            emit(run)
        fp.write("  </device>\n")
    fp.write("</superblock>\n")


def _int(el: ET.Element, name: str) -> int:
    v = el.get(name)
    if v is None:
        raise InvalidArgument(f"thin_dump XML <{el.tag}>", f"lacks the attribute {name}",
                              fix="give XML written by thin_dump or Pool.dump_xml")
    try:
        return int(v)
    except ValueError:
        raise InvalidArgument(f"thin_dump XML <{el.tag} {name}={v!r}>", "is not an integer",
                              fix="give XML written by thin_dump or Pool.dump_xml") from None


def restore_xml(fp: IO, path: str, *, virtual_sizes: Mapping[int, int | str] | None = None,
                **pool_options) -> "Pool":
    """Create a new pool at ``path`` holding the mappings and reference counts described by ``fp``.

    ``virtual_sizes`` maps dev ids to sizes; a device not named there gets the smallest size that
    holds its highest mapped block. Other keywords go to :meth:`Pool.create`. The data file starts
    sparse: its contents are the caller's business. The pool is returned open.

    >>> import io, tempfile, os
    >>> x = io.StringIO('<superblock uuid="" time="0" transaction="5" flags="0" version="2" '
    ...     'data_block_size="128" nr_data_blocks="8"><device dev_id="1" mapped_blocks="1" '
    ...     'transaction="0" creation_time="0" snap_time="0"><single_mapping origin_block="3" '
    ...     'data_block="6" time="0"/></device></superblock>')
    >>> p = restore_xml(x, os.path.join(tempfile.mkdtemp(), "p")); p.transaction_id, list(p.mappings(1))
    (5, [(3, 6, 0)])
    >>> p.close()
    """
    from .pool import DeviceDetails, Pool

    sizes = {k: parse_size(v, what="virtual size") for k, v in (virtual_sizes or {}).items()}
    pool: Pool | None = None
    dev: tuple[int, DeviceDetails] | None = None
    max_block = -1
    top_data = 0  # one past the highest data block mapped: where allocation should start looking
    meta: dict[str, int] = {}
    try:
        for event, el in ET.iterparse(fp, events=("start", "end")):
            if event == "start" and el.tag == "superblock":
                bs = _int(el, "data_block_size") * SECTOR
                nr = _int(el, "nr_data_blocks")
                meta = {"time": _int(el, "time"), "transaction": _int(el, "transaction")}
                pool = Pool.create(path, data_size=nr * bs, block_size=bs, **pool_options)
            elif event == "start" and el.tag == "device":
                if pool is None:
                    raise InvalidArgument("thin_dump XML", "has a <device> outside <superblock>", fix="check the file")
                dev_id = _int(el, "dev_id")
                pool.create_thin(dev_id, 1)
                d = pool._devs[dev_id]
                d.transaction_id = _int(el, "transaction")
                d.creation_time = _int(el, "creation_time")
                d.snap_time = _int(el, "snap_time")
                dev, max_block = (dev_id, d), -1
            elif event == "start" and el.tag in ("range_mapping", "single_mapping"):
                if pool is None or dev is None:
                    raise InvalidArgument("thin_dump XML", f"has <{el.tag}> outside <device>", fix="check the file")
                if el.tag == "single_mapping":
                    o, db, n = _int(el, "origin_block"), _int(el, "data_block"), 1
                else:
                    o, db, n = _int(el, "origin_begin"), _int(el, "data_begin"), _int(el, "length")
                t = _int(el, "time")
                if db + n > pool.nr_data_blocks:
                    raise InvalidArgument(f"thin_dump XML mapping of device {dev[0]} to data block {db + n - 1}",
                                          f"is beyond nr_data_blocks {pool.nr_data_blocks}", fix="check the file")
                tm, d = pool.tm, dev[1]
                for i in range(n):
                    tm.data_sm.inc(db + i)
                    d.root, old = btree.insert(tm, d.root, o + i, ((db + i) << 24) | t)
                    if old is None:
                        d.mapped_blocks += 1
                max_block = max(max_block, o + n - 1)
                top_data = max(top_data, db + n)
            elif event == "end" and el.tag == "device" and pool is not None and dev is not None:
                dev_id, d = dev
                d.virtual_size = sizes.get(dev_id, max(1, max_block + 1) * pool.block_size)
                if -(-d.virtual_size // pool.block_size) <= max_block:
                    raise InvalidArgument(f"virtual size of device {dev_id}", "is smaller than its mappings",
                                          fix=f"give at least {(max_block + 1) * pool.block_size} bytes")
                pool._dirty_devs.add(dev_id)
                dev = None
            if event == "end":
                el.clear()
    except ET.ParseError as e:
        if pool is not None:
            pool.close()
        raise InvalidArgument("thin_dump XML", f"does not parse ({e})", fix="give XML written by thin_dump") from None
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    if pool is None:
        raise InvalidArgument("thin_dump XML", "has no <superblock>", fix="give XML written by thin_dump")
    pool.tm.data_sm._cursor = top_data % pool.nr_data_blocks
    pool.sb.time = meta["time"]
    pool.sb.transaction_id = meta["transaction"] - 1
    pool._changed = True
    pool._commit_locked()
    return pool


__all__ = ["dump_xml", "restore_xml", "KIND_MAPPING"]
