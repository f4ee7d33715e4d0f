"""Scans in and out with SimpleITK: NIfTI, NRRD, MHA/MHD and DICOM series.

Reading reorients to one canonical orientation (LPS, so that array axes (z, y, x) run along
+S, +P, +L). The original geometry is kept, and writing restores it, so that a mask read back
by any tool lines up with its scan voxel for voxel, in the same orientation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import dicom, nifti, scanheader
from . import geometry as geo

CANONICAL = "LPS"
SCAN_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
SUPPORTED_FORMATS = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) or DICOM "
    "(a .dcm file or a folder of a series)"
)


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
    def affine(self) -> np.ndarray:
        """Array index -> world (mm, LPS, in array axis order); see ``geometry``."""
        return geo.compose(self.spacing, self.origin, self.direction)

    @property
    def name(self) -> str:
        path = self.source.get("path", "")
        return stem(Path(path)) if path else "scan"

    def geometry(self) -> dict:
        """Plain-data geometry to keep in a napari layer's metadata."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": np.asarray(self.direction).tolist(),
            "affine": self.affine.tolist(),
            "source": dict(self.source),
        }


def stem(path: Path) -> str:
    """A scan file's name without its suffix (``ct.nii.gz`` -> ``ct``): what outputs are named by."""
    name = path.name
    for suffix in (".nii.gz",) + SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _sitk():
    import SimpleITK as sitk

    return sitk


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
        return max(offset, int(size)) + int(np.prod([max(int(d), 1) for d in dims[1 : n + 1]])) * bitpix // 8
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
        raise InputError(f"{path}: the file is truncated ({length} of {expected} bytes); copy it again.")


def _read_image(path: Path):
    """A SimpleITK image, notes for the user, and extra source geometry (a DICOM slice's plane)."""
    sitk = _sitk()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    if path.is_dir() or dicom.is_dicom_file(path):
        scan = dicom.read(path)
        return scan.image, scan.notes, ({"plane": scan.plane} if scan.plane else {})
    scanheader.check(path)
    _check_complete(path)
    if nifti.is_nifti(path):
        return (*_read_nifti(path, []), {})
    return sitk.ReadImage(str(path)), [], {}


def _read_nifti(path: Path, notes: list[str]):
    """A NIfTI scan placed as nibabel places it: by the sform when sform_code > 0."""
    sitk = _sitk()
    header = nifti.read_header(path)
    if header is None:
        return sitk.ReadImage(str(path)), notes
    if header.version == 2:
        if not 2 <= header.ndim <= 3:
            raise InputError(
                f"{path} has {header.ndim} dimensions; the tool reads 2D images and "
                "3D volumes (extract one volume first)."
            )
        try:
            data = nifti.read_nifti2(path, header)
        except ValueError as exc:
            raise InputError(f"{path}: cannot be read as NIfTI-2 ({exc}).") from exc
        image = sitk.GetImageFromArray(np.ascontiguousarray(data.T))
    else:
        image = _with_nonfinite(sitk.ReadImage(str(path)), path, header)
    if image.GetDimension() == 3 and (header.version == 2 or header.uses_sform()):
        notes += _place_by_header(image, header, path)
    return image, notes


def _with_nonfinite(image, path: Path, header: nifti.Header):
    """ITK reads a NIfTI's NaN/inf voxels as 0; put them back, so that every format shows them
    alike (a note counts them, and a run refuses them instead of segmenting made-up zeros)."""
    sitk = _sitk()
    indices, values = nifti.nonfinite_voxels(path, header)
    if not indices.size or image.GetNumberOfComponentsPerPixel() != 1:
        return image
    array = sitk.GetArrayFromImage(image)  # (k, j, i): its C order is the file's Fortran order
    if not np.issubdtype(array.dtype, np.floating) or indices.max() >= array.size:
        return image
    array.reshape(-1)[indices] = values
    restored = sitk.GetImageFromArray(array)
    restored.CopyInformation(image)
    return restored


def _place_by_header(image, header: nifti.Header, path: Path) -> list[str]:
    """Set the image's geometry from the header's chosen transform (ITK took the qform)."""
    lps = nifti.RAS_TO_LPS @ header.affine_ras()
    linear = lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing[None, :]
    notes = []
    rigid = geo.nearest_rotation(direction)
    if np.abs(rigid - direction).max() > 1e-4:
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in image.GetSize()])).reshape(3, -1)
        error = np.abs((direction - rigid) @ (spacing[:, None] * corners)).max()
        notes.append(
            f"{path.name}: its sform shears the grid; it is placed by the nearest rigid "
            f"transform (up to {error:.2f} mm from the sform)."
        )
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in rigid.reshape(-1)))
    image.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    if header.version == 1 and int(header.fields["qform_code"]) > 0:
        qform = nifti.RAS_TO_LPS @ header.qform()
        size = np.array(image.GetSize()) - 1
        corners = np.array(np.meshgrid(*[[0, n] for n in size])).reshape(3, -1)
        shift = np.abs((qform - lps)[:3, :3] @ corners + (qform - lps)[:3, 3:]).max()
        if shift > 1e-3:
            notes.append(
                f"{path.name}: placed by its sform, as nibabel, FSL, ANTs and 3D Slicer "
                f"do; its qform differs by up to {shift:.1f} mm."
            )
    return notes


def read(path: str | os.PathLike) -> Volume:
    """Read a scan file or DICOM folder, reoriented to LPS. Raises InputError on bad files."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder.")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes).")
    try:
        image, notes, extra = _read_image(path)
    except InputError:
        raise
    except RuntimeError as exc:
        if "Unable to determine ImageIO reader" in str(exc):
            raise InputError(f"{path} is not in a supported format; open {SUPPORTED_FORMATS}.") from None
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = next(
            (line.split("ERROR:")[-1] for line in lines if "ERROR" in line), lines[-1] if lines else ""
        )
        reason = scanheader.clean_itk_message(reason).strip().rstrip(":.")
        raise InputError(
            f"{path}: cannot be read as a scan; it may be truncated, corrupt or of "
            f"an unknown format ({reason[:160]})."
        ) from None
    if image.GetNumberOfComponentsPerPixel() > 1 and image.GetDimension() == 3:
        raise InputError(
            f"{path} holds {image.GetNumberOfComponentsPerPixel()} components per "
            "voxel; the tool reads single-component scans."
        )
    if image.GetDimension() == 4:
        raise InputError(f"{path} is 4D (a time series); extract one volume first.")
    volume = _to_volume(image, path, notes)
    volume.source.update(extra)
    if nifti.is_nifti(path):
        header = nifti.read_header(path)
        if header is not None:
            volume.source["nifti"] = {"version": header.version, **header.geometry_fields()}
    volume.notes += _geometry_notes(volume) + _nonfinite_notes(volume)
    return volume


def _geometry_notes(volume: Volume) -> list[str]:
    """Tell the user when a scan is oblique: it is shown rotated, not resampled."""
    direction = np.asarray(volume.direction, dtype=float)
    if direction.shape != (3, 3) or np.allclose(direction, np.eye(3), atol=1e-6):
        return []
    angle = np.degrees(np.arccos(np.clip((np.trace(direction) - 1) / 2, -1, 1)))
    resampled = any("resampled" in note for note in volume.notes)
    return [
        f"{volume.name} is oblique ({angle:.1f} degrees from the scanner axes): it is shown "
        "rotated in place" + ("." if resampled else "; its voxels are not resampled.")
    ]


def _nonfinite_notes(volume: Volume) -> list[str]:
    if not np.issubdtype(volume.array.dtype, np.floating):
        return []
    bad = int(volume.array.size - np.count_nonzero(np.isfinite(volume.array)))
    if not bad:
        return []
    return [
        f"{volume.name} has {bad} NaN or infinite voxels; they are kept as they are in the "
        "layer, and a run needs them replaced first."
    ]


def _orientation(image) -> str:
    sitk = _sitk()
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def _to_volume(image, path: Path, notes: list[str]) -> Volume:
    sitk = _sitk()
    dim = image.GetDimension()
    source = {
        "path": str(path),
        "origin": list(image.GetOrigin()),
        "spacing": list(image.GetSpacing()),
        "direction": list(image.GetDirection()),
        "size": list(image.GetSize()),
        "pixel_id": image.GetPixelIDTypeAsString(),
    }
    if dim == 3:
        source["orientation"] = _orientation(image)
        image = sitk.DICOMOrient(image, CANONICAL)
    array = sitk.GetArrayFromImage(image)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    origin = tuple(float(o) for o in reversed(image.GetOrigin()))
    direction = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)[::-1, ::-1]
    return Volume(array, spacing, origin, direction, source, notes)


def write(
    path: str | os.PathLike,
    array: np.ndarray,
    like: Volume | dict | None = None,
    spacing=None,
    origin=None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``array`` (napari axis order) where its geometry places it.

    ``like`` is the source Volume, or a geometry dict: ``affine`` (array index -> world, see
    ``geometry``) or ``spacing``/``origin``/``direction``, and ``source`` (the scan file's own
    geometry). Without it, ``spacing`` and ``origin`` are used with an identity direction. When
    the array lies on its source scan's grid, it is stored in the scan's file orientation with
    the scan's exact geometry (for NIfTI: its qform and sform fields), so that any tool lines the
    two up voxel for voxel. The file appears whole or not at all (see ``outputs``); an existing
    file is replaced only with ``overwrite=True``, else an ``outputs.OutputExists`` is raised.
    """
    from . import outputs

    path = Path(path).expanduser()
    if not path.name.lower().endswith(WRITE_SUFFIXES):
        raise InputError(f"{path}: write .nii.gz, .nii, .nrrd, .mha or .mhd.")
    outputs.check_target(path, overwrite, "overwrite=True")
    outputs.check_folder(path.parent, "the output path")
    with outputs.staged(path.parent, overwrite, "overwrite=True") as stage:
        write_staged(stage, path.name, array, like, spacing, origin)
    return path


def write_staged(
    stage, name: str, array: np.ndarray, like: Volume | dict | None = None, spacing=None, origin=None
) -> Path:
    """Write into an ``outputs.Staging`` set: checked on disk, moved into place on commit."""
    sitk = _sitk()
    path = stage.folder / name
    if not name.lower().endswith(WRITE_SUFFIXES):
        raise InputError(f"{path}: write .nii.gz, .nii, .nrrd, .mha or .mhd.")
    array = np.ascontiguousarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype == np.int64:
        array = array.astype(np.int32)
    geometry = like.geometry() if isinstance(like, Volume) else dict(like or {})
    affine = _affine_of(geometry, array.ndim, spacing, origin)
    image = _itk_image(array, affine, path)
    source = geometry.get("source") or {}
    on_source_grid = False
    if array.ndim == 3 and source.get("orientation"):
        image = sitk.DICOMOrient(image, source["orientation"])
        on_source_grid = _matches_source(image, source)
        if on_source_grid:
            image.SetOrigin(tuple(source["origin"]))
            image.SetSpacing(tuple(source["spacing"]))
            image.SetDirection(tuple(source["direction"]))
    nifti_source = source.get("nifti") or {}
    header_fields = nifti_source if on_source_grid else {}
    version = nifti_source.get("version", 1)
    return stage.write(
        name,
        lambda target: _write_image(image, target, header_fields, version),
        lambda target: _verify_written(target, tuple(image.GetSize())),
    )


def _verify_written(path: Path, size: tuple[int, ...]) -> None:
    """Read a written file back whole: a full disk can leave a fragment without an error."""
    if nifti.is_nifti(path):
        _check_complete(path)
        return
    sitk = _sitk()
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise OSError(5, "the file did not read back") from exc
    if tuple(image.GetSize()) != size:
        raise OSError(5, f"the file read back with size {image.GetSize()}, not {size}")


def _affine_of(geometry: dict, ndim: int, spacing, origin) -> np.ndarray:
    if geometry.get("affine") is not None:
        affine = np.asarray(geometry["affine"], dtype=float)
        if affine.shape == (ndim + 1, ndim + 1):
            return affine
    if geometry.get("spacing") is not None:
        direction = geometry.get("direction")
        return geo.compose(
            geometry["spacing"][-ndim:],
            geometry["origin"][-ndim:],
            None if direction is None else np.asarray(direction)[-ndim:, -ndim:],
        )
    return geo.compose(
        spacing if spacing is not None else (1.0,) * ndim, origin if origin is not None else (0.0,) * ndim
    )


def _itk_image(array: np.ndarray, affine: np.ndarray, path: Path):
    """A SimpleITK image of a napari-order array placed by a napari-order affine."""
    sitk = _sitk()
    try:
        spacing, origin, direction = geo.decompose(affine)
    except ValueError as exc:
        raise InputError(f"{path}: cannot be written as a scan: {exc}.") from exc
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing)))
    image.SetOrigin(tuple(reversed(origin)))
    image.SetDirection(tuple(np.asarray(direction)[::-1, ::-1].reshape(-1)))
    return image


def _matches_source(image, source: dict, tolerance: float = 1e-3) -> bool:
    """Whether an image lies exactly on the grid of the scan file it came from."""
    if list(image.GetSize()) != list(source.get("size", [])):
        return False
    return (
        np.allclose(image.GetOrigin(), source["origin"], atol=tolerance)
        and np.allclose(image.GetSpacing(), source["spacing"], atol=tolerance)
        and np.allclose(image.GetDirection(), source["direction"], atol=tolerance)
    )


def _write_image(image, target: Path, header_fields: dict, nifti_version: int) -> None:
    """ITK writes; NIfTI-2 (which ITK cannot write) and the scan's NIfTI fields are ours."""
    sitk = _sitk()
    if nifti.is_nifti(target) and nifti_version == 2 and image.GetDimension() == 3:
        lps = np.eye(4)
        lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())[None, :]
        lps[:3, 3] = image.GetOrigin()
        nifti.write_nifti2(
            target, sitk.GetArrayFromImage(image).T, nifti.RAS_TO_LPS @ lps, header_fields or None
        )
        return
    sitk.WriteImage(image, str(target), True)
    if nifti.is_nifti(target) and header_fields:
        nifti.copy_geometry_fields(target, header_fields)
