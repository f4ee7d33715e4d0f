"""Scans in and out with SimpleITK: NIfTI, NRRD, MHA/MHD and DICOM series.

Reading reorients to one canonical orientation (LPS, so that array axes (z, y, x) run along
+S, +P, +L). The original geometry is kept, and writing restores it, so that a mask read back
by any tool lines up with its scan voxel for voxel, in the same orientation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

CANONICAL = "LPS"
SCAN_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


@dataclass
class Volume:
    """A scan as arrays and geometry, in array axis order (z, y, x) or (y, x).

    ``origin`` is the world position (mm, LPS) of voxel 0 and ``spacing`` the voxel size per
    array axis, after reorientation. ``source`` holds what is needed to write in the original
    orientation: ITK-order origin, spacing, direction, and the orientation code.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    source: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        path = self.source.get("path", "")
        return _stem(Path(path)) if path else "scan"

    def geometry(self) -> dict:
        """Plain-data geometry to keep in a napari layer's metadata."""
        return {"spacing": list(self.spacing), "origin": list(self.origin),
                "direction": np.asarray(self.direction).tolist(), "source": dict(self.source)}


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz",) + SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_scan_path(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() or p.name.lower().endswith(SCAN_SUFFIXES)


def _sitk():
    import SimpleITK as sitk

    return sitk


def _dicom_series(folder: Path) -> tuple[list[str], list[str]]:
    """The files of the largest series in a folder, and notes naming the others."""
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
    if not ids:
        raise InputError(f"{folder}: no DICOM series found in this folder.")
    series = sorted(((reader.GetGDCMSeriesFileNames(str(folder), sid), sid) for sid in ids),
                    key=lambda item: -len(item[0]))
    files, chosen = series[0]
    notes = []
    if len(series) > 1:
        others = ", ".join(f"{sid} ({len(f)} files)" for f, sid in series[1:])
        notes.append(f"{folder.name}: opened the largest DICOM series {chosen} ({len(files)} "
                     f"files); the folder also holds {others}.")
    return list(files), notes


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Bytes a complete NIfTI-1/2 file (uncompressed) must have, from its header."""
    for endian in "<>":
        size = np.frombuffer(header[:4], f"{endian}i4")[0]
        if size == 348:
            dims = np.frombuffer(header[40:56], f"{endian}i2")
            bitpix = int(np.frombuffer(header[72:74], f"{endian}i2")[0])
            offset = int(np.frombuffer(header[108:112], f"{endian}f4")[0])
        elif size == 540:
            dims = np.frombuffer(header[16:80], f"{endian}i8")
            bitpix = int(np.frombuffer(header[14:16], f"{endian}i2")[0])
            offset = int(np.frombuffer(header[168:176], f"{endian}i8")[0])
        else:
            continue
        n = int(dims[0])
        if not 1 <= n <= 7:
            return None
        return max(offset, int(size)) + int(np.prod([max(int(d), 1) for d in dims[1:n + 1]])) * bitpix // 8
    return None


def _check_complete(path: Path) -> None:
    """ITK reads a truncated NIfTI without complaint (the missing voxels come back as zeros)."""
    import gzip

    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                header = fh.read(540)
                length = len(header)
                while chunk := fh.read(1 << 24):
                    length += len(chunk)
        else:
            with open(path, "rb") as fh:
                header = fh.read(540)
            length = path.stat().st_size
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: the file is truncated or corrupt ({exc}); copy it again.") from exc
    expected = _nifti_expected_bytes(header)
    if expected is not None and length < expected:
        raise InputError(f"{path}: the file is truncated ({length} of {expected} bytes); copy it "
                         "again.")


def _read_image(path: Path):
    sitk = _sitk()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    notes: list[str] = []
    if path.is_dir():
        files, notes = _dicom_series(path)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        return reader.Execute(), notes
    if path.name.lower().endswith(".dcm"):
        sid = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path.parent)) or ()
        for s in sid:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path.parent), s)
            if str(path) in files or os.path.abspath(path) in map(os.path.abspath, files):
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(files)
                return reader.Execute(), notes
    _check_complete(path)
    return sitk.ReadImage(str(path)), notes


def read(path: str | os.PathLike) -> Volume:
    """Read a scan file or DICOM folder, reoriented to LPS. Raises InputError on bad files."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder.")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes).")
    try:
        image, notes = _read_image(path)
    except InputError:
        raise
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = next((line.split("ERROR:")[-1] for line in lines if "ERROR" in line),
                      lines[-1] if lines else "")
        raise InputError(f"{path}: cannot be read as a scan; it may be truncated, corrupt or of "
                         f"an unknown format ({reason.strip()[:160]}).") from exc
    if image.GetNumberOfComponentsPerPixel() > 1 and image.GetDimension() == 3:
        raise InputError(f"{path} holds {image.GetNumberOfComponentsPerPixel()} components per "
                         "voxel; the tool reads single-component scans.")
    if image.GetDimension() == 4:
        raise InputError(f"{path} is 4D (a time series); extract one volume first.")
    return _to_volume(image, path, notes)


def _orientation(image) -> str:
    sitk = _sitk()
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def _to_volume(image, path: Path, notes: list[str]) -> Volume:
    sitk = _sitk()
    dim = image.GetDimension()
    source = {"path": str(path), "origin": list(image.GetOrigin()),
              "spacing": list(image.GetSpacing()), "direction": list(image.GetDirection()),
              "size": list(image.GetSize()), "pixel_id": image.GetPixelIDTypeAsString()}
    if dim == 3:
        source["orientation"] = _orientation(image)
        image = sitk.DICOMOrient(image, CANONICAL)
    array = sitk.GetArrayFromImage(image)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    origin = tuple(float(o) for o in reversed(image.GetOrigin()))
    direction = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)[::-1, ::-1]
    return Volume(array, spacing, origin, direction, source, notes)


def write(path: str | os.PathLike, array: np.ndarray, like: Volume | dict | None = None,
          spacing=None, origin=None) -> Path:
    """Write ``array`` (canonical orientation) with the geometry of the scan it came from.

    ``like`` is the source Volume (or its ``geometry()`` dict); without it ``spacing`` and
    ``origin`` (array order) are used with an identity direction. The file appears whole or not
    at all: it is written in a temporary folder beside the target and renamed.
    """
    sitk = _sitk()
    path = Path(path).expanduser()
    if not path.name.lower().endswith(WRITE_SUFFIXES):
        raise InputError(f"{path}: write .nii.gz, .nii, .nrrd, .mha or .mhd.")
    array = np.ascontiguousarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype == np.int64:
        array = array.astype(np.int32)
    image = sitk.GetImageFromArray(array)
    geometry = like.geometry() if isinstance(like, Volume) else like
    if geometry is not None:
        image.SetSpacing(tuple(reversed([float(s) for s in geometry["spacing"]])))
        image.SetOrigin(tuple(reversed([float(o) for o in geometry["origin"]])))
        direction = np.asarray(geometry["direction"], dtype=float)[::-1, ::-1]
        image.SetDirection(tuple(direction.reshape(-1)))
        source = geometry.get("source") or {}
        if array.ndim == 3 and source.get("orientation"):
            image = sitk.DICOMOrient(image, source["orientation"])
            if list(image.GetSize()) == source.get("size"):
                image.SetOrigin(tuple(source["origin"]))
                image.SetSpacing(tuple(source["spacing"]))
                image.SetDirection(tuple(source["direction"]))
    else:
        if spacing is not None:
            image.SetSpacing(tuple(reversed([float(s) for s in spacing])))
        if origin is not None:
            image.SetOrigin(tuple(reversed([float(o) for o in origin])))
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".attunet-", dir=path.parent))
    try:
        sitk.WriteImage(image, str(staging / path.name), True)
        for produced in staging.iterdir():
            os.replace(produced, path.parent / produced.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
