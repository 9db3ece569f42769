"""HID report descriptors: bytes in, the fields of every report out (sans-IO).

A report descriptor is a list of items (HID 1.11, section 6.2.2). Each short
item is a prefix byte (``bSize`` in bits 0-1, 3 meaning four bytes; ``bType``
main/global/local in bits 2-3; ``bTag`` in bits 4-7) and 0, 1, 2 or 4 data
bytes; a long item is ``0xFE``, a size byte, a tag byte and that many data
bytes (none is defined, so they are skipped). Global items (usage page,
logical range, report size, count and id) hold until changed and can be
saved and restored with push and pop; local items (usages, usage ranges)
belong to the next main item only. Main items (input, output, feature) lay
out fields one after the other in their report, per report id and kind;
collections group them.

A usage given in one or two bytes takes the usage page in force when its
main item is read (as Linux does since 5.3), a four-byte usage carries its
own page. Logical minimum and maximum are signed; a maximum is read
unsigned when the minimum is not negative (``15 00 26 FF 00`` is 0..255).

Descriptors come from a USB device plugged into the box: every size, depth,
count and range is bounded before it is used, and a descriptor outside the
bounds is refused with :class:`HidDescriptorError` naming the byte offset
and what is wrong.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Literal

from linetap.firmware.errors import DeviceError

MAX_DESCRIPTOR_BYTES = 4096  # HID_MAX_DESCRIPTOR_SIZE in Linux: what hidraw hands out
MAX_DEPTH = 16  # nested collections
MAX_PUSH = 8  # saved global states
MAX_FIELD_BITS = 256  # one value (Linux refuses wider ones too)
MAX_COUNT = 4096  # values in one main item
MAX_USAGES = 4096  # usages of one main item, ranges expanded
MAX_FIELDS = 1024  # main items with data in the whole descriptor
MAX_REPORT_BYTES = 4096  # one report, as hidraw reads it

Kind = Literal["input", "output", "feature"]
KINDS: tuple[Kind, ...] = ("input", "output", "feature")
_MAIN_KIND: dict[int, Kind] = {0x8: "input", 0x9: "output", 0xB: "feature"}

# Main item flag bits (HID 1.11, 6.2.2.5).
CONSTANT, VARIABLE, RELATIVE, WRAP, NON_LINEAR, NO_PREFERRED, NULL_STATE, VOLATILE = (1 << i for i in range(8))


class HidDescriptorError(DeviceError, ValueError):
    """A report descriptor is malformed or outside the bounds this parser accepts."""


@dataclass(frozen=True)
class Field:
    """One main item's values in a report: ``count`` values of ``bit_size`` bits from ``bit_offset``.

    ``bit_offset`` counts from the first data bit, after the report id byte
    of a numbered report. ``usages`` are 32-bit (page << 16 | id). A variable
    field's value ``i`` has usage ``usages[min(i, len - 1)]``; an array
    field's values are indexes into ``usages`` offset by ``logical_min``.
    """

    kind: Kind
    report_id: int  # 0: the descriptor numbers no reports
    bit_offset: int
    bit_size: int
    count: int
    usages: tuple[int, ...]
    logical_min: int
    logical_max: int
    flags: int
    application: int | None  # the usage of the application collection around it

    @property
    def constant(self) -> bool:
        return bool(self.flags & CONSTANT)

    @property
    def variable(self) -> bool:
        return bool(self.flags & VARIABLE)

    @property
    def relative(self) -> bool:
        return bool(self.flags & RELATIVE)

    def usage_of(self, index: int) -> int | None:
        """The usage of a variable field's ``index``-th value."""
        return self.usages[min(index, len(self.usages) - 1)] if self.usages else None

    def values(self, data: bytes) -> tuple[int, ...]:
        """This field's values in a report's data (after the id byte); signed when the logical range is."""
        whole, mask, sign = int.from_bytes(data, "little") >> self.bit_offset, (1 << self.bit_size) - 1, 0
        if self.logical_min < 0:
            sign = 1 << (self.bit_size - 1)
        out = []
        for _ in range(self.count):
            raw = whole & mask
            out.append(raw - (raw & sign) * 2)
            whole >>= self.bit_size
        return tuple(out)


@dataclass(frozen=True)
class ReportDescriptor:
    """The parsed descriptor: every field, and what reports they make."""

    fields: tuple[Field, ...]
    applications: tuple[int, ...]  # usages of the top-level (application) collections
    numbered: bool  # reports start with a report id byte

    def fields_of(self, kind: Kind, report_id: int | None = None) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.kind == kind and (report_id is None or f.report_id == report_id))

    def report_ids(self, kind: Kind) -> tuple[int, ...]:
        return tuple(sorted({f.report_id for f in self.fields if f.kind == kind}))

    def report_bytes(self, kind: Kind, report_id: int) -> int:
        """The length of one report on the wire, the id byte included when reports are numbered."""
        bits = max((f.bit_offset + f.bit_size * f.count for f in self.fields_of(kind, report_id)), default=0)
        return (bits + 7) // 8 + (1 if self.numbered else 0)

    def max_report_bytes(self, kind: Kind) -> int:
        return max((self.report_bytes(kind, rid) for rid in self.report_ids(kind)), default=0)


@dataclass(frozen=True)
class _Globals:
    usage_page: int = 0
    logical_min: int = 0
    logical_max_raw: int = 0
    logical_max_size: int = 0
    report_size: int = 0
    report_count: int = 0
    report_id: int = 0


@dataclass
class _Locals:
    usages: list[tuple[int, bool]] = field(default_factory=list)  # (usage, carries its own page)
    minimum: tuple[int, bool] | None = None
    ranges: list[tuple[tuple[int, bool], tuple[int, bool]]] = field(default_factory=list)


def _fail(offset: int, problem: str) -> HidDescriptorError:
    return HidDescriptorError(f"HID report descriptor at byte {offset}: {problem}; the device's descriptor "
                              "is malformed or outside linetap's bounds (is this a telephony headset?)")


def _items(data: bytes):
    """(offset, type, tag, size, value) of each short item; long items are skipped."""
    i = 0
    while i < len(data):
        prefix = data[i]
        if prefix == 0xFE:  # long item: size, tag, data
            if i + 3 > len(data) or i + 3 + data[i + 1] > len(data):
                raise _fail(i, "a long item runs past the end of the descriptor (truncated?)")
            i += 3 + data[i + 1]
            continue
        size = (0, 1, 2, 4)[prefix & 3]
        if i + 1 + size > len(data):
            raise _fail(i, f"an item of {size} data bytes runs past the end of the descriptor (truncated?)")
        yield i, (prefix >> 2) & 3, prefix >> 4, size, int.from_bytes(data[i + 1:i + 1 + size], "little")
        i += 1 + size


def _signed(value: int, size: int) -> int:
    bits = 8 * size
    return value - (1 << bits) if size and value >> (bits - 1) else value


class _Parser:
    def __init__(self) -> None:
        self.g = _Globals()
        self.stack: list[_Globals] = []
        self.local = _Locals()
        self.collections: list[int | None] = []
        self.applications: list[int] = []
        self.fields: list[Field] = []
        self.offsets: dict[tuple[Kind, int], int] = defaultdict(int)
        self.numbered = False

    def global_item(self, at: int, tag: int, size: int, value: int) -> None:
        g = self.g
        if tag == 0x0:
            self.g = replace(g, usage_page=value & 0xFFFF)
        elif tag == 0x1:
            self.g = replace(g, logical_min=_signed(value, size))
        elif tag == 0x2:
            self.g = replace(g, logical_max_raw=value, logical_max_size=size)
        elif tag == 0x7:
            if not 0 < value <= MAX_FIELD_BITS:
                raise _fail(at, f"report size {value} bits is outside 1..{MAX_FIELD_BITS}")
            self.g = replace(g, report_size=value)
        elif tag == 0x8:
            if not 0 < value <= 255:
                raise _fail(at, f"report id {value} is outside 1..255")
            self.g, self.numbered = replace(g, report_id=value), True
        elif tag == 0x9:
            if value > MAX_COUNT:
                raise _fail(at, f"report count {value} is over {MAX_COUNT}")
            self.g = replace(g, report_count=value)
        elif tag == 0xA:
            if len(self.stack) >= MAX_PUSH:
                raise _fail(at, f"more than {MAX_PUSH} nested pushes")
            self.stack.append(g)
        elif tag == 0xB:
            if not self.stack:
                raise _fail(at, "pop without a push")
            self.g = self.stack.pop()
        elif tag > 0xB:
            raise _fail(at, f"unknown global item tag 0x{tag:X}")
        # 3..6: physical range, unit exponent, unit: not needed here.

    def local_item(self, at: int, tag: int, size: int, value: int) -> None:
        usage = (value, size == 4)
        if tag == 0x0:
            self.local.usages.append(usage)
        elif tag == 0x1:
            self.local.minimum = usage
        elif tag == 0x2:
            if self.local.minimum is None:
                raise _fail(at, "usage maximum without a usage minimum")
            self.local.ranges.append((self.local.minimum, usage))
            self.local.minimum = None
        if len(self.local.usages) > MAX_USAGES:
            raise _fail(at, f"more than {MAX_USAGES} usages before one main item")
        # 3..5, 7..9: designators and strings; 0xA: delimiter (alternative usages, all kept).

    def usages(self, at: int) -> tuple[int, ...]:
        page = self.g.usage_page << 16

        def full(usage: tuple[int, bool]) -> int:
            return usage[0] if usage[1] else page | (usage[0] & 0xFFFF)

        found = [full(u) for u in self.local.usages]
        for low, high in self.local.ranges:
            first, last = full(low), full(high)
            if last < first or len(found) + last - first + 1 > MAX_USAGES:
                raise _fail(at, f"usage range 0x{first:08X}..0x{last:08X} is reversed or over {MAX_USAGES} usages")
            found.extend(range(first, last + 1))
        return tuple(found)

    def main_item(self, at: int, tag: int, value: int) -> None:
        if tag in _MAIN_KIND:
            self.data_item(at, _MAIN_KIND[tag], value)
        elif tag == 0xA:
            if len(self.collections) >= MAX_DEPTH:
                raise _fail(at, f"collections nested deeper than {MAX_DEPTH}")
            usages = self.usages(at)
            usage = usages[0] if usages else None
            if not self.collections and usage is not None:
                self.applications.append(usage)
            self.collections.append(usage)
        elif tag == 0xC:
            if not self.collections:
                raise _fail(at, "end collection without a collection")
            self.collections.pop()
        else:
            raise _fail(at, f"unknown main item tag 0x{tag:X}")
        self.local = _Locals()

    def data_item(self, at: int, kind: Kind, flags: int) -> None:
        g = self.g
        if g.report_count and not g.report_size:
            raise _fail(at, f"{kind} item with report count {g.report_count} but no report size")
        bits = g.report_size * g.report_count
        key = (kind, g.report_id)
        offset = self.offsets[key]
        if (offset + bits + 7) // 8 + 1 > MAX_REPORT_BYTES:
            raise _fail(at, f"{kind} report {g.report_id} grows past {MAX_REPORT_BYTES} bytes")
        self.offsets[key] = offset + bits
        usages = self.usages(at)
        if not bits:
            return
        if len(self.fields) >= MAX_FIELDS:
            raise _fail(at, f"more than {MAX_FIELDS} fields")
        logical_max = g.logical_max_raw if g.logical_min >= 0 else _signed(g.logical_max_raw, g.logical_max_size)
        application = self.collections[0] if self.collections else None
        self.fields.append(Field(kind, g.report_id, offset, g.report_size, g.report_count, usages,
                                 g.logical_min, logical_max, flags, application))


def parse_descriptor(data: bytes) -> ReportDescriptor:
    """Parse a HID report descriptor; raises :class:`HidDescriptorError` naming the offset and the problem."""
    if not data:
        raise _fail(0, "the descriptor is empty")
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise _fail(MAX_DESCRIPTOR_BYTES, f"the descriptor is {len(data)} bytes, over {MAX_DESCRIPTOR_BYTES}")
    parser = _Parser()
    for at, item_type, tag, size, value in _items(bytes(data)):
        if item_type == 0:
            parser.main_item(at, tag, value)
        elif item_type == 1:
            parser.global_item(at, tag, size, value)
        elif item_type == 2:
            parser.local_item(at, tag, size, value)
        else:
            raise _fail(at, "reserved item type 3")
    if parser.collections:
        raise _fail(len(data), f"{len(parser.collections)} collection(s) not closed (truncated?)")
    if parser.numbered and any(f.report_id == 0 for f in parser.fields):
        raise _fail(0, "some reports have a report id and some have none")
    return ReportDescriptor(tuple(parser.fields), tuple(parser.applications), parser.numbered)
