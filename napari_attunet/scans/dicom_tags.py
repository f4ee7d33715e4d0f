"""A small reader of DICOM data elements, for what SimpleITK's metadata leaves out.

SimpleITK (GDCM) reads pixels and top-level tags, but not sequences: the per-frame positions of
an enhanced multi-frame image (PerFrameFunctionalGroupsSequence) live in sequences. This walks
the data set of a Part 10 file up to the pixel data and returns its elements as a dict keyed by
(group, element): plain values as bytes, sequences as lists of dicts.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

PIXEL_DATA = (0x7FE0, 0x0010)
_ITEM, _ITEM_END, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
IMPLICIT_LE, EXPLICIT_BE, DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"


class _Walker:
    def __init__(self, buf: bytes, explicit: bool, little: bool):
        self.buf, self.explicit = buf, explicit
        self.u16, self.u32 = ("<H", "<I") if little else (">H", ">I")
        self.little = little

    def _tag(self, pos: int) -> tuple[int, int]:
        return (
            struct.unpack_from(self.u16, self.buf, pos)[0],
            struct.unpack_from(self.u16, self.buf, pos + 2)[0],
        )

    def dataset(self, pos: int, end: int | None, top: bool = False) -> tuple[dict, int]:
        out: dict = {"_walker": self}
        limit = len(self.buf) if end is None else min(end, len(self.buf))
        while pos + 8 <= limit:
            tag = self._tag(pos)
            if tag == _ITEM_END:
                return out, pos + 8
            if top and tag == PIXEL_DATA:
                break
            vr = None
            if self.explicit and tag[0] != 0xFFFE:
                vr = self.buf[pos + 4 : pos + 6]
                if vr in _LONG_VRS:
                    length = struct.unpack_from(self.u32, self.buf, pos + 8)[0]
                    pos += 12
                else:
                    length = struct.unpack_from(self.u16, self.buf, pos + 6)[0]
                    pos += 8
            else:
                length = struct.unpack_from(self.u32, self.buf, pos + 4)[0]
                pos += 8
            if vr == b"SQ" or length == _UNDEFINED:
                walker = _Walker(self.buf, False, True) if vr == b"UN" else self
                out[tag], pos = walker.sequence(pos, length)
            else:
                out[tag] = bytes(self.buf[pos : pos + length])
                pos += length
        return out, pos

    def sequence(self, pos: int, length: int) -> tuple[list[dict], int]:
        items: list[dict] = []
        end = None if length == _UNDEFINED else pos + length
        while pos + 8 <= len(self.buf) and (end is None or pos < end):
            tag = self._tag(pos)
            item_length = struct.unpack_from(self.u32, self.buf, pos + 4)[0]
            pos += 8
            if tag == _SEQ_END:
                break
            if tag != _ITEM:
                raise ValueError("malformed sequence")
            if item_length == _UNDEFINED:
                item, pos = self.dataset(pos, None)
            else:
                item, _ = self.dataset(pos, pos + item_length)
                pos += item_length
            items.append(item)
        return items, (pos if end is None else end)


def file_meta(buf: bytes) -> tuple[dict, int] | None:
    """Group 0002 of a Part 10 file (always explicit VR little endian), and where it ends."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        return None
    walker = _Walker(buf, True, True)
    pos, out = 132, {}
    while pos + 8 <= len(buf) and walker._tag(pos)[0] == 0x0002:
        element, pos = walker.dataset(pos, pos + 8 + _element_size(buf, pos))
        out.update(element)
    return out, pos


def _element_size(buf: bytes, pos: int) -> int:
    vr = buf[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        return 4 + struct.unpack_from("<I", buf, pos + 8)[0]
    return struct.unpack_from("<H", buf, pos + 6)[0]


def read_dataset(path: Path) -> tuple[dict, dict]:
    """(file meta, data set up to the pixel data) of a Part 10 file; ValueError if it is none."""
    buf = Path(path).read_bytes()
    meta = file_meta(buf)
    if meta is None:
        raise ValueError("no DICOM preamble")
    header, pos = meta
    syntax = text(header.get((0x0002, 0x0010), b""))
    body = buf[pos:]
    if syntax == DEFLATED:
        body, syntax = zlib.decompress(body, -15), "1.2.840.10008.1.2.1"
    walker = _Walker(body, syntax != IMPLICIT_LE, syntax != EXPLICIT_BE)
    try:
        dataset, _ = walker.dataset(0, None, top=True)
    except (struct.error, ValueError) as exc:
        raise ValueError(f"malformed data set ({exc})") from exc
    return header, dataset


def items(dataset: dict, tag: tuple[int, int]) -> list[dict]:
    """The items of a sequence element (parsed now if it was stored as bytes: implicit VR)."""
    value = dataset.get(tag)
    if value is None:
        return []
    if isinstance(value, list):
        return value
    walker: _Walker | None = dataset.get("_walker")
    if walker is None:
        return []
    inner = _Walker(value, walker.explicit, walker.little)
    try:
        found, _ = inner.sequence(0, len(value))
    except (struct.error, ValueError):
        return []
    return found


def nested(dataset: dict, *path: tuple[int, int]) -> dict | None:
    """The first item at the end of a path of sequences, or None."""
    current = dataset
    for tag in path:
        found = items(current, tag)
        if not found:
            return None
        current = found[0]
    return current


def text(value: bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("ascii", "replace").strip("\x00 ")


def numbers(value: bytes | None) -> list[float] | None:
    """A decimal-string (DS/IS) value as floats, or None if absent or malformed."""
    raw = text(value)
    if not raw:
        return None
    try:
        return [float(part) for part in raw.split("\\")]
    except ValueError:
        return None
