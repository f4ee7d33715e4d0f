"""NIfTI-1 and NIfTI-2 headers: the geometry nibabel would use, and NIfTI-2 files in and out.

SimpleITK places a NIfTI-1 scan by its qform. nibabel, FSL, ANTs and 3D Slicer use the sform
when ``sform_code > 0``, and ITK cannot read NIfTI-2 at all. This module reads the header itself
so that the reader can place every scan as nibabel does, and writes NIfTI-2 when the scan was one.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (NIfTI datatype code, numpy dtype) for the types a scan or a mask uses.
DTYPES = {
    2: "u1",
    4: "i2",
    8: "i4",
    16: "f4",
    64: "f8",
    256: "i1",
    512: "u2",
    768: "u4",
    1024: "i8",
    1280: "u8",
}
CODES = {np.dtype(v).str[1:]: k for k, v in DTYPES.items()}
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Field layouts: name -> (offset, dtype, count), per version.
LAYOUT = {
    1: {
        "dim": (40, "i2", 8),
        "datatype": (70, "i2", 1),
        "bitpix": (72, "i2", 1),
        "pixdim": (76, "f4", 8),
        "vox_offset": (108, "f4", 1),
        "scl_slope": (112, "f4", 1),
        "scl_inter": (116, "f4", 1),
        "qform_code": (252, "i2", 1),
        "sform_code": (254, "i2", 1),
        "quatern": (256, "f4", 3),
        "qoffset": (268, "f4", 3),
        "srow": (280, "f4", 12),
    },
    2: {
        "datatype": (12, "i2", 1),
        "bitpix": (14, "i2", 1),
        "dim": (16, "i8", 8),
        "pixdim": (104, "f8", 8),
        "vox_offset": (168, "i8", 1),
        "scl_slope": (176, "f8", 1),
        "scl_inter": (184, "f8", 1),
        "qform_code": (344, "i4", 1),
        "sform_code": (348, "i4", 1),
        "quatern": (352, "f8", 3),
        "qoffset": (376, "f8", 3),
        "srow": (400, "f8", 12),
    },
}
# What a mask copies from its scan so that every tool places both alike.
GEOMETRY_FIELDS = ("qform_code", "sform_code", "quatern", "qoffset", "srow")


@dataclass
class Header:
    version: int
    endian: str
    fields: dict

    @property
    def ndim(self) -> int:
        return int(self.fields["dim"][0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.fields["dim"][1 : self.ndim + 1])

    def qform(self) -> np.ndarray:
        """The qform as a 4x4 RAS affine of (i, j, k), as the NIfTI standard defines it."""
        b, c, d = (float(v) for v in self.fields["quatern"])
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        rotation = np.array(
            [
                [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
            ]
        )
        pixdim = [float(p) for p in self.fields["pixdim"]]
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        zooms = [abs(p) if p else 1.0 for p in pixdim[1:4]]
        out = np.eye(4)
        out[:3, :3] = rotation * np.array([zooms[0], zooms[1], qfac * zooms[2]])[None, :]
        out[:3, 3] = [float(v) for v in self.fields["qoffset"]]
        return out

    def sform(self) -> np.ndarray:
        out = np.eye(4)
        out[:3, :] = np.asarray(self.fields["srow"], dtype=float).reshape(3, 4)
        return out

    def affine_ras(self) -> np.ndarray:
        """nibabel's choice: the sform when sform_code > 0, else the qform, else the voxel sizes."""
        if int(self.fields["sform_code"]) > 0:
            return self.sform()
        if int(self.fields["qform_code"]) > 0:
            return self.qform()
        out = np.eye(4)
        out[:3, :3] = np.diag([abs(float(p)) or 1.0 for p in self.fields["pixdim"][1:4]])
        return out

    def uses_sform(self) -> bool:
        return int(self.fields["sform_code"]) > 0

    def geometry_fields(self) -> dict:
        return {name: np.asarray(self.fields[name]).tolist() for name in GEOMETRY_FIELDS} | {
            "qfac": float(self.fields["pixdim"][0])
        }


def is_nifti(path: Path | str) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _open(path: Path):
    return gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")


def parse_header(raw: bytes) -> Header | None:
    """The header of a NIfTI-1 or NIfTI-2 file from its first 540 bytes, or None."""
    for endian in "<>":
        if len(raw) < 4:
            return None
        size = int(np.frombuffer(raw[:4], f"{endian}i4")[0])
        version = {348: 1, 540: 2}.get(size)
        if version is None or len(raw) < size:
            continue
        fields = {}
        for name, (offset, dtype, count) in LAYOUT[version].items():
            values = np.frombuffer(
                raw[offset : offset + np.dtype(dtype).itemsize * count], f"{endian}{dtype}"
            )
            fields[name] = values[0] if count == 1 else values.copy()
        return Header(version, endian, fields)
    return None


def read_header(path: Path | str) -> Header | None:
    with _open(Path(path)) as fh:
        return parse_header(fh.read(540))


def nonfinite_voxels(path: Path | str, header: Header, chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Flat (Fortran-order) indices and scaled values of the NaN/inf voxels of a float NIfTI.

    ITK reads them as 0 without a word; with these, the reader puts them back and says so. The
    voxels are streamed, never held whole. Both arrays are empty for integer types.
    """
    f = header.fields
    code = int(f["datatype"])
    if DTYPES.get(code) not in ("f4", "f8"):
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    dtype = np.dtype(header.endian + DTYPES[code])
    total = int(np.prod(header.shape))
    slope, inter = float(f["scl_slope"]), float(f["scl_inter"])
    indices, values = [], []
    with _open(Path(path)) as fh:
        fh.read(int(f["vox_offset"]))
        done = 0
        while done < total:
            raw = fh.read(min(chunk, total - done) * dtype.itemsize)
            if not raw:
                break
            block = np.frombuffer(raw[: len(raw) - len(raw) % dtype.itemsize], dtype)
            bad = np.flatnonzero(~np.isfinite(block))
            if bad.size:
                indices.append(bad + done)
                found = block[bad].astype(np.float64)
                values.append(found * slope + inter if slope not in (0.0, 1.0) or inter else found)
            done += block.size
    if not indices:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    return np.concatenate(indices), np.concatenate(values)


def read_nifti2(path: Path | str, header: Header) -> np.ndarray:
    """The voxels of a NIfTI-2 file, as a numpy array indexed (i, j, k), scaled."""
    f = header.fields
    code = int(f["datatype"])
    if code not in DTYPES:
        raise ValueError(f"NIfTI datatype {code} is not supported")
    dtype = np.dtype(header.endian + DTYPES[code])
    shape = header.shape
    with _open(Path(path)) as fh:
        fh.read(int(f["vox_offset"]))
        raw = fh.read(int(np.prod(shape)) * dtype.itemsize)
    if len(raw) < int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"truncated ({len(raw)} of {int(np.prod(shape)) * dtype.itemsize} voxel bytes)")
    data = np.frombuffer(raw, dtype).reshape(shape, order="F")
    slope, inter = float(f["scl_slope"]), float(f["scl_inter"])
    if slope not in (0.0, 1.0) or inter != 0.0:
        data = data.astype(np.float32) * np.float32(slope) + np.float32(inter)
    return np.ascontiguousarray(data.astype(data.dtype.newbyteorder("=")))


def write_nifti2(
    path: Path | str, data: np.ndarray, affine_ras: np.ndarray, geometry: dict | None = None
) -> None:
    """Write ``data`` (indexed (i, j, k)) as NIfTI-2, with qform and sform from the affine.

    ``geometry`` (a scan header's ``geometry_fields``) replaces both transforms and their
    codes, so that a mask carries exactly its scan's.
    """
    data = np.asarray(data)
    key = data.dtype.str[1:]
    if key not in CODES:
        data = data.astype(np.float32 if data.dtype.kind == "f" else np.int32)
        key = data.dtype.str[1:]
    header = np.zeros(544, np.uint8)
    put = _writer(header, "<")
    put(0, "i4", [540])
    header[4:12] = np.frombuffer(b"n+2\0\r\n\x1a\n", np.uint8)
    put(12, "i2", [CODES[key]])
    put(14, "i2", [data.dtype.itemsize * 8])
    dims = [data.ndim, *data.shape] + [1] * (7 - data.ndim)
    put(16, "i8", dims)
    spacing = np.linalg.norm(affine_ras[:3, :3], axis=0)
    put(104, "f8", [1.0, *spacing[: data.ndim]] + [1.0] * (7 - data.ndim))
    put(168, "i8", [544])
    put(176, "f8", [1.0, 0.0])
    put(500, "i4", [2])  # xyzt_units: millimetres
    fields = geometry or _fields_from_affine(affine_ras)
    put(104, "f8", [fields["qfac"]])
    put(344, "i4", [fields["qform_code"], fields["sform_code"]])
    put(352, "f8", fields["quatern"])
    put(376, "f8", fields["qoffset"])
    put(400, "f8", fields["srow"])
    payload = header.tobytes() + np.asarray(data, data.dtype.newbyteorder("<")).tobytes(order="F")
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(payload)


def _writer(buffer: np.ndarray, endian: str):
    def put(offset: int, dtype: str, values) -> None:
        raw = np.asarray(values, f"{endian}{dtype}").tobytes()
        buffer[offset : offset + len(raw)] = np.frombuffer(raw, np.uint8)

    return put


def _fields_from_affine(affine_ras: np.ndarray) -> dict:
    """qform (quaternion) and sform fields, both from one rigid affine, codes 1 (scanner)."""
    linear = affine_ras[:3, :3] / np.linalg.norm(affine_ras[:3, :3], axis=0)[None, :]
    qfac = 1.0
    if np.linalg.det(linear) < 0:
        linear = linear.copy()
        linear[:, 2] *= -1
        qfac = -1.0
    return {
        "qform_code": 1,
        "sform_code": 1,
        "quatern": list(_quaternion(linear)),
        "qoffset": list(affine_ras[:3, 3]),
        "srow": list(affine_ras[:3, :].reshape(-1)),
        "qfac": qfac,
    }


def _quaternion(rotation: np.ndarray) -> tuple[float, float, float]:
    """(b, c, d) of a proper rotation, with a >= 0 as the standard requires."""
    r = rotation
    a = 0.5 * np.sqrt(max(0.0, 1 + r[0, 0] + r[1, 1] + r[2, 2]))
    if a > 1e-3:
        b = (r[2, 1] - r[1, 2]) / (4 * a)
        c = (r[0, 2] - r[2, 0]) / (4 * a)
        d = (r[1, 0] - r[0, 1]) / (4 * a)
        return float(b), float(c), float(d)
    # Near a half turn: take the largest of b, c, d first.
    b = 0.5 * np.sqrt(max(0.0, 1 + r[0, 0] - r[1, 1] - r[2, 2]))
    c = 0.5 * np.sqrt(max(0.0, 1 - r[0, 0] + r[1, 1] - r[2, 2]))
    d = 0.5 * np.sqrt(max(0.0, 1 - r[0, 0] - r[1, 1] + r[2, 2]))
    if b >= c and b >= d:
        c, d, a = (r[0, 1] + r[1, 0]) / (4 * b), (r[0, 2] + r[2, 0]) / (4 * b), (r[2, 1] - r[1, 2]) / (4 * b)
    elif c >= d:
        b, d, a = (r[0, 1] + r[1, 0]) / (4 * c), (r[1, 2] + r[2, 1]) / (4 * c), (r[0, 2] - r[2, 0]) / (4 * c)
    else:
        b, c, a = (r[0, 2] + r[2, 0]) / (4 * d), (r[1, 2] + r[2, 1]) / (4 * d), (r[1, 0] - r[0, 1]) / (4 * d)
    if a < 0:
        b, c, d = -b, -c, -d
    return float(b), float(c), float(d)


def copy_geometry_fields(path: Path | str, geometry: dict) -> None:
    """Give a NIfTI-1 file written by ITK its scan's qform and sform fields, byte for byte.

    Only the transforms and their codes change; the voxels and voxel sizes are already the
    scan's, because the mask lies on the scan's grid.
    """
    path = Path(path)
    with _open(path) as fh:
        raw = bytearray(fh.read())
    header = parse_header(bytes(raw[:540]))
    if header is None or header.version != 1:
        return
    buffer = np.frombuffer(raw, np.uint8).copy()
    put = _writer(buffer, header.endian)
    put(76, "f4", [geometry["qfac"]])
    put(252, "i2", [geometry["qform_code"], geometry["sform_code"]])
    put(256, "f4", geometry["quatern"])
    put(268, "f4", geometry["qoffset"])
    put(280, "f4", geometry["srow"])
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(buffer.tobytes())
