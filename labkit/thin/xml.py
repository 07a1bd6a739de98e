"""thin_dump's XML: the format alone, written from and read into plain records (no pool in here).

The format (thin-provisioning-tools ``xml_format.cc``)::

    <superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128"
                nr_data_blocks="16384">
      <device dev_id="1" mapped_blocks="3" transaction="0" creation_time="0" snap_time="1">
        <range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
        <single_mapping origin_block="7" data_block="9" time="1"/>
      </device>
    </superblock>

``data_block_size`` is in 512-byte sectors. :func:`write_xml` takes the superblock's fields and, per
device, its details and its mappings; :func:`read_xml` yields :class:`XmlSuperblock`,
:class:`XmlDevice`, :class:`XmlMapping` and :class:`XmlDeviceEnd` records in document order, streaming.
:meth:`labkit.thin.Pool.dump_xml` and :meth:`labkit.thin.Pool.restore_xml` build on these two.

>>> import io
>>> buf = io.StringIO()
>>> write_xml(buf, XmlSuperblock(0, 1, 64 << 10, 16), [(1, XmlDevice(1, 2, 0, 0, 0), [(0, 0, 0), (1, 1, 0)])])
>>> print(buf.getvalue().splitlines()[2].strip())
<range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
>>> [type(r).__name__ for r in read_xml(io.StringIO(buf.getvalue()))]
['XmlSuperblock', 'XmlDevice', 'XmlMapping', 'XmlDeviceEnd']
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from typing import IO

from .._sys.record import Record
from ..errors import InvalidArgument

__all__ = ["SECTOR", "XmlSuperblock", "XmlDevice", "XmlMapping", "XmlDeviceEnd", "XmlRecord", "write_xml",
           "read_xml"]

SECTOR = 512
TIME_MASK = (1 << 24) - 1


class XmlSuperblock(Record):
    """``<superblock>``: the pool's clock, transaction, block size (bytes) and number of data blocks."""

    time: int
    transaction: int
    block_size: int
    nr_data_blocks: int


class XmlDevice(Record):
    """``<device>``: a thin device's recorded details (the XML has no virtual size)."""

    dev_id: int
    mapped_blocks: int
    transaction: int
    creation_time: int
    snap_time: int


class XmlMapping(Record):
    """``<single_mapping>`` / ``<range_mapping>``: ``length`` virtual blocks from ``origin`` to data
    blocks from ``data``, all stamped ``time``."""

    origin: int
    data: int
    length: int
    time: int


class XmlDeviceEnd(Record):
    """``</device>``: the device's mappings are complete."""

    dev_id: int


XmlRecord = XmlSuperblock | XmlDevice | XmlMapping | XmlDeviceEnd


def write_xml(fp: IO[str], sb: XmlSuperblock,
              devices: Iterable[tuple[int, XmlDevice, Iterable[tuple[int, int, int]]]]) -> None:
    """Write thin_dump XML to ``fp``: ``devices`` yields ``(dev_id, details, mappings)`` with mappings
    as ``(virtual block, data block, time)`` in virtual-block order (runs become ``range_mapping``)."""
    fp.write(f'<superblock uuid="" time="{sb.time}" transaction="{sb.transaction}" flags="0" version="2" '
             f'data_block_size="{sb.block_size // SECTOR}" nr_data_blocks="{sb.nr_data_blocks}">\n')
    for dev_id, d, mappings in devices:
        fp.write(f'  <device dev_id="{dev_id}" mapped_blocks="{d.mapped_blocks}" transaction="{d.transaction}" '
                 f'creation_time="{d.creation_time}" snap_time="{d.snap_time}">\n')
        run: list[int] | None = None  # origin, data, length, time
        for k, db, t in mappings:
            if run is not None and k == run[0] + run[2] and db == run[1] + run[2] and t == run[3]:
                run[2] += 1
                continue
            if run is not None:
                _emit(fp, run)
            run = [k, db, 1, t]
        if run is not None:
            _emit(fp, run)
        fp.write("  </device>\n")
    fp.write("</superblock>\n")


def _emit(fp: IO[str], r: list[int]) -> None:
    if r[2] == 1:
        fp.write(f'    <single_mapping origin_block="{r[0]}" data_block="{r[1]}" time="{r[3]}"/>\n')
    else:
        fp.write(f'    <range_mapping origin_begin="{r[0]}" data_begin="{r[1]}" length="{r[2]}" time="{r[3]}"/>\n')


def _int(el: ET.Element, name: str) -> int:
    v = el.get(name)
    if v is None:
        raise InvalidArgument(f"thin_dump XML <{el.tag}>", f"lacks the attribute {name}",
                              fix="give XML written by thin_dump or Pool.dump_xml")
    try:
        n = int(v)
    except ValueError:
        raise InvalidArgument(f"thin_dump XML <{el.tag} {name}={v!r}>", "is not an integer",
                              fix="give XML written by thin_dump or Pool.dump_xml") from None
    if n < 0:
        raise InvalidArgument(f"thin_dump XML <{el.tag} {name}={v!r}>", "is negative",
                              fix="give XML written by thin_dump or Pool.dump_xml")
    return n


def read_xml(fp: IO[str] | IO[bytes]) -> Iterator[XmlRecord]:
    """Parse thin_dump XML from ``fp`` into records, checking structure (a device inside the superblock,
    mappings inside a device) and numbers. Raises :class:`~labkit.errors.InvalidArgument` naming the
    problem; never builds the whole document in memory."""
    seen_sb = False
    dev: int | None = None
    try:
        for event, el in ET.iterparse(fp, events=("start", "end")):
            if event == "start" and el.tag == "superblock":
                if seen_sb:
                    raise InvalidArgument("thin_dump XML", "has two <superblock>s", fix="check the file")
                seen_sb = True
                bs = _int(el, "data_block_size") * SECTOR
                yield XmlSuperblock(_int(el, "time"), _int(el, "transaction"), bs, _int(el, "nr_data_blocks"))
            elif event == "start" and el.tag == "device":
                if not seen_sb or dev is not None:
                    raise InvalidArgument("thin_dump XML", "has a <device> outside <superblock>", fix="check the file")
                dev = _int(el, "dev_id")
                yield XmlDevice(dev, _int(el, "mapped_blocks"), _int(el, "transaction"), _int(el, "creation_time"),
                                _int(el, "snap_time"))
            elif event == "start" and el.tag in ("range_mapping", "single_mapping"):
                if dev is None:
                    raise InvalidArgument("thin_dump XML", f"has <{el.tag}> outside <device>", fix="check the file")
                if el.tag == "single_mapping":
                    o, db, n = _int(el, "origin_block"), _int(el, "data_block"), 1
                else:
                    o, db, n = _int(el, "origin_begin"), _int(el, "data_begin"), _int(el, "length")
                t = _int(el, "time")
                if t > TIME_MASK:
                    raise InvalidArgument(f"thin_dump XML mapping time {t}", "does not fit 24 bits",
                                          fix="check the file")
                yield XmlMapping(o, db, n, t)
            elif event == "end" and el.tag == "device" and dev is not None:
                yield XmlDeviceEnd(dev)
                dev = None
            if event == "end":
                el.clear()
    except ET.ParseError as e:
        raise InvalidArgument("thin_dump XML", f"does not parse ({e})", fix="give XML written by thin_dump") from None
    if not seen_sb:
        raise InvalidArgument("thin_dump XML", "has no <superblock>", fix="give XML written by thin_dump")
