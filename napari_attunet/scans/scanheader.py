"""What a scan file's header declares, read before the voxels: size, voxel type, data file.

ITK allocates the whole declared volume before it reads a voxel, and a detached data file that
is missing comes back as an ITK message with object addresses. Reading the header first lets
the reader refuse such files with one sentence: a missing data file is named, a volume larger
than memory is refused with its size, a compressed payload shorter than declared is called
truncated, and complex NIfTI voxels are refused.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..limits import gib, refuse_over
from . import nifti

# NRRD type names (all spellings of the standard) and MetaImage element types -> bytes.
_NRRD_BYTES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t", "char"),
    2: (
        "short",
        "short int",
        "signed short",
        "signed short int",
        "int16",
        "int16_t",
        "ushort",
        "unsigned short",
        "unsigned short int",
        "uint16",
        "uint16_t",
    ),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: (
        "longlong",
        "long long",
        "long long int",
        "signed long long",
        "signed long long int",
        "int64",
        "int64_t",
        "ulonglong",
        "unsigned long long",
        "unsigned long long int",
        "uint64",
        "uint64_t",
        "double",
    ),
}
NRRD_BYTES = {name: size for size, names in _NRRD_BYTES.items() for name in names}
META_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
NIFTI_COMPLEX = {32: "complex64", 1792: "complex128", 2048: "complex256"}
HEADER_LIMIT = 1 << 16
# Array, plus the reoriented copy the reader makes: what a read needs at its peak.
READ_COPIES = 2


@dataclass
class Declared:
    """A header's promise: voxel count per axis, bytes per voxel, and where the voxels are."""

    shape: tuple[int, ...]
    voxel_bytes: int
    type_name: str
    data_file: Path | None = None  # detached data, or None when attached
    data_offset: int | None = None  # where attached data starts
    gzip: bool = False

    @property
    def nbytes(self) -> int:
        return int(np.prod([float(n) for n in self.shape])) * self.voxel_bytes


def _text_header(path: Path) -> tuple[list[str], int | None]:
    """The header lines, and the offset just after a blank line ending it (attached data)."""
    with open(path, "rb") as fh:
        head = fh.read(HEADER_LIMIT)
    lines, offset = [], 0
    for raw in head.split(b"\n"):
        offset += len(raw) + 1
        line = raw.decode("latin-1").rstrip("\r")
        if not line.strip():
            return lines, min(offset, len(head))
        lines.append(line)
        if line.split("=")[0].strip() == "ElementDataFile":
            return lines, min(offset, len(head))
    return lines, None


def _nrrd(path: Path) -> Declared | None:
    lines, offset = _text_header(path)
    if not lines or not lines[0].startswith("NRRD"):
        return None
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    try:
        sizes = tuple(int(v) for v in fields["sizes"].split())
    except (KeyError, ValueError):
        return None
    type_name = fields.get("type", "").lower()
    voxel_bytes = NRRD_BYTES.get(type_name)
    if voxel_bytes is None:
        return None
    data = fields.get("data file") or fields.get("datafile")
    data_file = None
    if data:
        if data.split()[0] == "LIST" or "%" in data:
            return Declared(sizes, voxel_bytes, type_name)  # many files: size checks only
        data_file = (path.parent / data).resolve()
    encoding = fields.get("encoding", "raw").lower()
    return Declared(
        sizes, voxel_bytes, type_name, data_file, None if data_file else offset, encoding in ("gzip", "gz")
    )


def _metaimage(path: Path) -> Declared | None:
    lines, offset = _text_header(path)
    fields = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        sizes = tuple(int(v) for v in fields["DimSize"].split())
    except (KeyError, ValueError):
        return None
    element = fields.get("ElementType", "").upper()
    voxel_bytes = META_BYTES.get(element)
    if voxel_bytes is None:
        return None
    channels = int(fields.get("ElementNumberOfChannels", "1") or 1)
    data = fields.get("ElementDataFile", "LOCAL")
    data_file = None
    if data != "LOCAL":
        if data.split()[0] == "LIST" or "%" in data:
            return Declared(sizes, voxel_bytes * channels, element)
        data_file = (path.parent / data).resolve()
    compressed = fields.get("CompressedData", "False").lower() == "true"
    return Declared(
        sizes,
        voxel_bytes * channels,
        element,
        data_file,
        None if data_file else offset,
        compressed and data_file is None,
    )


def _nifti(path: Path) -> Declared | None:
    try:
        header = nifti.read_header(path)
    except (OSError, EOFError, ValueError):
        return None  # the reader's own checks name a truncated or corrupt file
    if header is None:
        return None
    code = int(header.fields["datatype"])
    if code in NIFTI_COMPLEX:
        raise InputError(
            f"{path} holds complex voxels ({NIFTI_COMPLEX[code]}); save the "
            "magnitude (or the real part) as a real-valued image first."
        )
    bitpix = int(header.fields["bitpix"])
    if header.ndim < 1 or bitpix <= 0:
        return None
    return Declared(tuple(max(n, 1) for n in header.shape), max(bitpix // 8, 1), f"NIfTI datatype {code}")


def declared(path: Path) -> Declared | None:
    """What the header of a NIfTI, NRRD/NHDR or MHA/MHD file declares; None for others."""
    name = path.name.lower()
    if nifti.is_nifti(path):
        return _nifti(path)
    if name.endswith((".nrrd", ".nhdr")):
        return _nrrd(path)
    if name.endswith((".mha", ".mhd")):
        return _metaimage(path)
    return None


def _gzip_length(path: Path, offset: int, limit: int) -> int:
    """Bytes a gzip stream starting at ``offset`` inflates to, counted without keeping them
    (stops once ``limit`` is reached)."""
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip (NRRD) or zlib (MetaImage)
    total = 0
    with open(path, "rb") as fh:
        fh.seek(offset)
        while total < limit and (block := fh.read(1 << 20)):
            total += len(inflater.decompress(block, 1 << 26))
            while inflater.unconsumed_tail and total < limit:
                total += len(inflater.decompress(inflater.unconsumed_tail, 1 << 26))
            if inflater.eof:
                break
    return total


def check(path: Path) -> None:
    """Refuse, from the header alone, a file the reader could not read or could not hold."""
    info = declared(path)
    if info is None:
        return
    if info.data_file is not None and not info.data_file.is_file():
        raise InputError(
            f"{path}: its data file {info.data_file.name} is missing (looked for "
            f"{info.data_file}); copy it next to the header."
        )
    shape = " x ".join(str(n) for n in info.shape)
    refuse_over(
        READ_COPIES * info.nbytes,
        f"{path}, which declares {shape} voxels of {info.type_name} ({gib(info.nbytes)}),",
        "check that this is the right file, or crop it with another tool first.",
        InputError,
    )
    if info.gzip and info.data_offset is not None:
        try:
            length = _gzip_length(path, info.data_offset, info.nbytes)
        except (zlib.error, OSError, EOFError, gzip.BadGzipFile):
            raise InputError(f"{path}: its compressed voxels are corrupt; copy the file again.") from None
        if length < info.nbytes:
            raise InputError(
                f"{path}: the file is truncated (its compressed voxels hold "
                f"{length} of the {info.nbytes} bytes the header declares); copy "
                "it again."
            )


_ADDRESS = re.compile(r"\b\w+\(0x[0-9a-fA-F]+\):\s*")


def clean_itk_message(text: str) -> str:
    """An ITK message without object addresses such as ``NrrdImageIO(0x55b0ac34fad0):``."""
    return _ADDRESS.sub("", text)
