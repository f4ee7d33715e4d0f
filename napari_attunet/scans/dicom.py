"""DICOM in: the image series of a folder (or of one file), placed where the patient was.

Pixels and top-level tags come from SimpleITK (GDCM); per-frame positions of enhanced multi-frame
files from ``dicom_tags``. Every slice is placed by its ImagePositionPatient along the normal of
its ImageOrientationPatient, never by file order or a mean spacing:

- files that hold no image of the series (RT dose, SEG, SR, DICOMDIR, corrupt or non-DICOM files)
  are skipped and named;
- duplicate positions keep the first slice by instance number, and are reported;
- a gap or uneven spacing is resampled onto a uniform grid along the normal (linear), and reported;
- a gantry tilt (positions off the normal) is resampled onto an orthogonal grid by shifting each
  slice in its plane, as dcm2niix does, and reported with its angle;
- a single slice is a 2D image in its own plane, its 3D placement in ``DicomScan.plane``.

The image returned always has an orthonormal direction (ITK order: columns r, rows c, normal n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import dicom_tags as tags

# SOP classes that are not images of a scan, by UID prefix.
FOREIGN = {
    "1.2.840.10008.1.3.10": "a DICOMDIR index",
    "1.2.840.10008.5.1.4.1.1.481.2": "an RT Dose grid",
    "1.2.840.10008.5.1.4.1.1.481.3": "an RT Structure Set",
    "1.2.840.10008.5.1.4.1.1.481.5": "an RT Plan",
    "1.2.840.10008.5.1.4.1.1.481": "an RT object",
    "1.2.840.10008.5.1.4.1.1.66.4": "a segmentation (SEG)",
    "1.2.840.10008.5.1.4.1.1.66": "a raw data, registration or segmentation object",
    "1.2.840.10008.5.1.4.1.1.88": "a structured report (SR)",
    "1.2.840.10008.5.1.4.1.1.11": "a presentation state",
    "1.2.840.10008.5.1.4.1.1.9": "a waveform",
    "1.2.840.10008.5.1.4.1.1.104": "an encapsulated document",
}
UNIFORM_TOLERANCE = 0.01  # of the slice step: positions closer than this to a uniform grid
DUPLICATE_MM = 0.01  # slices closer than this along the normal share a position
TILT_MM = 0.02  # in-plane drift of slice positions below this is rounding, not tilt


@dataclass
class DicomScan:
    """What ``read`` gives io: a SimpleITK image, sentences for the user, and for a single
    slice its placement in 3D (LPS): ``origin`` of pixel (0, 0) and the unit ``axes`` of the
    array's rows and columns."""

    image: object
    notes: list[str] = field(default_factory=list)
    plane: dict | None = None


@dataclass
class _Slice:
    path: Path
    frame: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float]
    instance: int
    size: tuple[int, int]
    multi: bool = False


@dataclass
class _File:
    path: Path
    series: str
    sop_class: str
    frames: int
    slices: list[_Slice]
    slice_step: float | None  # SpacingBetweenSlices or SliceThickness, for frames without positions


def _sitk():
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    return sitk


def is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


# ---- headers ---------------------------------------------------------------------------------


def _foreign_kind(sop_class: str) -> str | None:
    for prefix in sorted(FOREIGN, key=len, reverse=True):
        if sop_class == prefix or sop_class.startswith(prefix + "."):
            return FOREIGN[prefix]
    return None


_UNREADABLE = ("not DICOM, or unreadable", "a corrupt or truncated image")


def _why_unreadable(path: Path) -> str:
    """Name what GDCM could not read: a known non-image object, or not DICOM at all."""
    try:
        meta, dataset = tags.read_dataset(path)
    except (OSError, ValueError):
        return _UNREADABLE[0]
    sop = tags.text(meta.get((0x0002, 0x0002))) or tags.text(dataset.get((0x0008, 0x0016)))
    kind = _foreign_kind(sop)
    if kind:
        return kind
    if (0x0028, 0x0010) in dataset:
        return _UNREADABLE[1]
    return "DICOM without an image"


def _floats(reader, key: str) -> list[float] | None:
    if not reader.HasMetaDataKey(key):
        return None
    return tags.numbers(reader.GetMetaData(key).encode("ascii", "replace"))


def _int(reader, key: str, default: int) -> int:
    values = _floats(reader, key)
    return int(values[0]) if values else default


def _header(path: Path) -> _File | str:
    """The header of an image file, or a phrase saying why it holds no image of a scan."""
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return _why_unreadable(path)
    meta = lambda key: reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""
    sop = meta("0008|0016")
    kind = _foreign_kind(sop)
    if kind:
        return kind
    rows, cols = _int(reader, "0028|0010", 0), _int(reader, "0028|0011", 0)
    if rows <= 0 or cols <= 0:
        return "DICOM without an image"
    frames = _int(reader, "0028|0008", 1)
    spacing = _floats(reader, "0028|0030")
    spacing = (spacing[0], spacing[1]) if spacing and len(spacing) == 2 else None
    step = _floats(reader, "0018|0088") or _floats(reader, "0018|0050")
    instance = _int(reader, "0020|0013", 0)
    if frames > 1:
        slices = _frames(path, frames, spacing, instance, (rows, cols))
    else:
        position = _floats(reader, "0020|0032")
        orientation = _floats(reader, "0020|0037")
        slices = [
            _Slice(
                path,
                0,
                _vector(position, 3),
                _vector(orientation, 6),
                spacing or (1.0, 1.0),
                instance,
                (rows, cols),
            )
        ]
    return _File(path, meta("0020|000e"), sop, frames, slices, step[0] if step and step[0] > 0 else None)


def _vector(values: list[float] | None, n: int) -> np.ndarray | None:
    if values is None or len(values) != n or not all(math.isfinite(v) for v in values):
        return None
    return np.array(values, dtype=float)


def _frames(path: Path, frames: int, spacing, instance: int, size) -> list[_Slice]:
    """One slice per frame, placed by the functional groups of an enhanced multi-frame file."""
    try:
        _, dataset = tags.read_dataset(path)
    except (OSError, ValueError):
        dataset = {}
    shared = tags.nested(dataset, (0x5200, 0x9229)) or {}
    per_frame = tags.items(dataset, (0x5200, 0x9230))

    def group_value(item: dict, sequence, tag):
        for source in (item, shared):
            found = tags.nested(source, sequence) if source else None
            if found is not None and tag in found:
                return tags.numbers(found[tag])
        return tags.numbers(dataset.get(tag))

    slices = []
    for k in range(frames):
        item = per_frame[k] if k < len(per_frame) else {}
        position = group_value(item, (0x0020, 0x9113), (0x0020, 0x0032))
        orientation = group_value(item, (0x0020, 0x9116), (0x0020, 0x0037))
        pixel = group_value(item, (0x0028, 0x9110), (0x0028, 0x0030))
        pixel = (pixel[0], pixel[1]) if pixel and len(pixel) == 2 else spacing
        slices.append(
            _Slice(
                path,
                k,
                _vector(position, 3) if per_frame else None,
                _vector(orientation, 6),
                pixel or (1.0, 1.0),
                instance,
                size,
                True,
            )
        )
    return slices


# ---- choosing the series -----------------------------------------------------------------------


def _candidates(path: Path) -> tuple[list[Path], Path]:
    if path.is_dir():
        folder = path
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        folder = path.parent
        files = [path]
    return files, folder


def _list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _gather(path: Path) -> tuple[list[_File], list[str]]:
    """The files of the image series to open, and notes about what was left aside."""
    notes: list[str] = []
    if path.is_file():
        chosen = _header(path)
        if isinstance(chosen, str) and chosen in _UNREADABLE:
            raise InputError(f"{path}: this file cannot be read as a DICOM image ({chosen}); copy it again.")
        if isinstance(chosen, str):
            raise InputError(
                f"{path}: this DICOM file is {chosen}, not an image; open the image "
                "series file or folder instead."
            )
        if chosen.frames > 1 or not chosen.series:
            return [chosen], notes
        siblings = [
            p for p in sorted(path.parent.iterdir()) if p.is_file() and p != path and is_dicom_file(p)
        ]
        files = [chosen] + [
            f
            for f in map(_header, siblings)
            if isinstance(f, _File) and f.series == chosen.series and f.frames == 1
        ]
        return files, notes

    files, folder = _candidates(path)
    headers, skipped = [], []
    for file in files:
        header = _header(file)
        if isinstance(header, str):
            skipped.append(f"{file.name} ({header})")
        else:
            headers.append(header)
    if not headers:
        subfolders = [p.name for p in path.iterdir() if p.is_dir()] if path.is_dir() else []
        what = (
            f"it holds {_count(len(files), 'file')}, none an image of a scan: {_list(skipped, 4)}"
            if files
            else "it holds no files"
        )
        hint = (
            f"; subfolders are not searched, open one of them ({_list(subfolders, 3)})" if subfolders else ""
        )
        raise InputError(f"{path}: no DICOM image series found in this folder: {what}{hint}.")
    series: dict[str, list[_File]] = {}
    for header in headers:
        series.setdefault(header.series, []).append(header)
    ranked = sorted(series.items(), key=lambda item: -sum(len(f.slices) for f in item[1]))
    chosen_uid, chosen = ranked[0]
    if len(ranked) > 1:
        others = ", ".join(f"{uid} ({len(f)} files)" for uid, f in ranked[1:])
        notes.append(
            f"{folder.name}: opened the largest DICOM series {chosen_uid} "
            f"({len(chosen)} files); the folder also holds {others}."
        )
    if skipped:
        notes.append(
            f"{folder.name}: skipped {_count(len(skipped), 'file')} that "
            f"{'hold' if len(skipped) > 1 else 'holds'} no image of a scan: "
            f"{_list(skipped)}."
        )
    multi = [f for f in chosen if f.frames > 1]
    if multi and len(chosen) > 1:
        largest = max(multi, key=lambda f: f.frames)
        notes.append(
            f"{folder.name}: the series mixes multi-frame and single files; opened the "
            f"largest multi-frame file {largest.path.name} ({largest.frames} frames)."
        )
        chosen = [largest]
    return chosen, notes


# ---- pixels ------------------------------------------------------------------------------------


def _pixels(files: list[_File], path: Path, notes: list[str]) -> dict[Path, np.ndarray]:
    """Pixel arrays (frames, rows, cols[, components]) per file; files that fail are named."""
    sitk = _sitk()
    arrays, failed = {}, []
    for file in files:
        try:
            image = sitk.ReadImage(str(file.path), imageIO="GDCMImageIO")
        except RuntimeError:
            failed.append(file.path.name)
            continue
        array = sitk.GetArrayFromImage(image)
        per_frame = image.GetNumberOfComponentsPerPixel() > 1
        if array.ndim == 2 + per_frame:
            array = array[None]
        arrays[file.path] = array
    if failed and not arrays:
        raise InputError(
            f"{path}: no slice of the series could be read (corrupt or truncated: "
            f"{_list(failed, 4)}); copy the files again."
        )
    if failed:
        notes.append(
            f"{path.name}: left out {len(failed)} unreadable slice file"
            f"{'s' * (len(failed) > 1)} (corrupt or truncated): {_list(failed)}."
        )
    return arrays


# ---- geometry ----------------------------------------------------------------------------------


def patient_frame(orientation) -> np.ndarray:
    """Orthonormal (r, c, n) rows from ImageOrientationPatient (r: along a row, c: down a
    column, n: their cross product, the slice normal), as the reader places a series; a DICOM
    SEG's frames are placed by the same rule (``dicom_seg``)."""
    orientation = np.asarray(orientation, dtype=float)
    r = orientation[:3] / np.linalg.norm(orientation[:3])
    c = orientation[3:] - (orientation[3:] @ r) * r
    c = c / np.linalg.norm(c)
    return np.stack([r, c, np.cross(r, c)])


def _placed_group(slices: list[_Slice]) -> tuple[list[_Slice], int]:
    """The largest group of slices that share orientation and size; how many were left out."""
    groups: dict[tuple, list[_Slice]] = {}
    for s in slices:
        key = (s.size, tuple(np.round(s.orientation, 3)), tuple(np.round(s.pixel_spacing, 4)))
        groups.setdefault(key, []).append(s)
    best = max(groups.values(), key=len)
    return best, len(slices) - len(best)


def placed_slices(path: Path) -> tuple[list[_Slice], np.ndarray] | None:
    """The slices ``read`` builds its image from, for the series at ``path`` (a folder or one
    of its files): its largest group of one orientation, size and pixel spacing, before
    duplicates are dropped, with their ``patient_frame``. None when an image has no patient
    position or orientation (``read`` then stacks the files unplaced). A DICOM SEG refers to
    exactly these files (``dicom_seg.load_source``)."""
    files, _ = _gather(path)
    slices = [s for f in files for s in f.slices]
    if any(s.position is None or s.orientation is None for s in slices):
        return None
    slices, _ = _placed_group(slices)
    return slices, patient_frame(slices[0].orientation)


def read(path: str | Path) -> DicomScan:
    """Open a DICOM folder or file as one image: 3D for a series or multi-frame, 2D for a slice."""
    path = Path(path)
    files, notes = _gather(path)
    name = path.name
    slices = [s for f in files for s in f.slices]
    step_hint = next((f.slice_step for f in files if f.slice_step), None)
    if any(s.position is None or s.orientation is None for s in slices):
        arrays = _pixels(files, path, notes)
        slices = [s for s in slices if s.path in arrays]
        return _unplaced(slices, arrays, step_hint, name, notes)
    slices, others = _placed_group(slices)
    if others:
        notes.append(
            f"{name}: left out {others} slice{'s' * (others > 1)} with another "
            "orientation or size than the rest (a localizer?)."
        )
    frame = patient_frame(slices[0].orientation)
    slices = _sort_unique(slices, frame[2], name, notes)
    image = _series_image(slices)
    if image is None:
        kept = {s.path for s in slices}
        arrays = _pixels([f for f in files if f.path in kept], path, notes)
        slices = [s for s in slices if s.path in arrays]
        image = _stack(slices, arrays)
    if len(slices) == 1:
        return _single(image[0], slices[0], frame, name, notes)
    depth = np.array([s.position @ frame[2] for s in slices])
    return _volume(image, slices, depth, frame, name, notes)


def _series_image(slices: list[_Slice]):
    """The slices, one file each, read in this order by GDCM in one go (fast); None when that is
    not the case or a file fails (then files are read one by one, to name the bad ones)."""
    if len(slices) < 2 or any(s.multi for s in slices):
        return None
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(s.path) for s in slices])
    try:
        return reader.Execute()
    except RuntimeError:
        return None


def _sort_unique(slices: list[_Slice], normal: np.ndarray, name: str, notes: list[str]) -> list[_Slice]:
    depth = np.array([s.position @ normal for s in slices])
    order = sorted(range(len(slices)), key=lambda k: (depth[k], slices[k].instance, slices[k].frame))
    kept, dropped = [order[0]], []
    for k in order[1:]:
        if abs(depth[k] - depth[kept[-1]]) < DUPLICATE_MM:
            dropped.append(k)
        else:
            kept.append(k)
    if dropped:
        where = sorted({round(float(depth[k]), 2) for k in dropped})
        labels = [_label(slices[k]) for k in dropped]
        notes.append(
            f"{name}: {_count(len(dropped), 'slice')} "
            f"{'repeat' if len(dropped) > 1 else 'repeats'} a position "
            f"already taken ({_list(labels)}, at {_list([f'{d:g} mm' for d in where], 4)} "
            "along the slice normal); kept the first of each position by instance number."
        )
    return [slices[k] for k in kept]


def _label(s: _Slice) -> str:
    return f"{s.path.name} frame {s.frame + 1}" if s.multi else s.path.name


def _stack(slices: list[_Slice], arrays: dict[Path, np.ndarray]) -> np.ndarray:
    planes = [arrays[s.path][s.frame] for s in slices]
    dtype = np.result_type(*[p.dtype for p in planes])
    return np.stack([p.astype(dtype, copy=False) for p in planes])


def _direction(frame: np.ndarray) -> tuple[float, ...]:
    """ITK direction (row-major 3x3 whose columns are the axes of x, y, z) from (r, c, n) rows."""
    return tuple(float(v) for v in frame.T.reshape(-1))


def _image(array, spacing, origin, frame: np.ndarray):
    sitk = _sitk()
    if isinstance(array, np.ndarray):
        image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    else:
        image = array
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(_direction(frame))
    return image


def _volume(
    stack, slices: list[_Slice], depth: np.ndarray, frame: np.ndarray, name: str, notes: list[str]
) -> DicomScan:
    """``stack``: the sorted slices, a numpy array or a SimpleITK image (its geometry replaced)."""
    dy, dx = slices[0].pixel_spacing
    origin = slices[0].position
    offsets = np.array(
        [[(s.position - origin) @ frame[0], (s.position - origin) @ frame[1]] for s in slices]
    )  # in-plane drift (along r, along c) per slice, mm
    rel = depth - depth[0]
    count = len(slices)
    steps = np.diff(rel)
    # the finest step present (a stray step under half the median is not a step to follow)
    step = float(np.min(steps[steps >= np.median(steps) / 2]))
    uniform_step = rel[-1] / (count - 1)
    uniform = np.max(np.abs(rel - uniform_step * np.arange(count))) <= UNIFORM_TOLERANCE * step
    tilted = np.max(np.abs(offsets)) > TILT_MM
    if uniform and not tilted:
        return DicomScan(_image(stack, (dx, dy, uniform_step), origin, frame), notes)
    if not isinstance(stack, np.ndarray):
        stack = _sitk().GetArrayFromImage(stack)
    if uniform:
        grid = rel
    else:
        total = int(round(rel[-1] / step)) + 1
        grid = np.linspace(0.0, rel[-1], total)
        notes.append(_gap_note(name, rel, steps, step, slices, grid))
    if tilted:
        notes.append(_tilt_note(name, rel, offsets))
    resampled = _resample(stack, rel, offsets / np.array([dx, dy]), grid)
    return DicomScan(_image(resampled, (dx, dy, grid[1] - grid[0]), origin, frame), notes)


def _gap_note(name, rel, steps, step, slices, grid) -> str:
    worst = int(np.argmax(steps))
    where = (
        f"between {slices[worst].path.name} and {slices[worst + 1].path.name}"
        if slices[worst].path != slices[worst + 1].path
        else f"between frames {slices[worst].frame + 1} and {slices[worst + 1].frame + 1}"
    )
    largest = f"a gap of {steps[worst]:.2f} mm" if steps[worst] > 1.5 * step else f"{steps[worst]:.2f} mm"
    return (
        f"{name}: the slices are not evenly spaced: steps of {steps.min():.2f} to "
        f"{steps.max():.2f} mm along the slice normal, the largest ({largest}) {where}, "
        f"{rel[worst]:.2f} mm from the first slice; resampled onto a uniform "
        f"{grid[1] - grid[0]:.3f} mm grid ({len(rel)} -> {len(grid)} slices) by linear "
        "interpolation between neighbouring slices."
    )


def _tilt_note(name, rel, offsets) -> str:
    slope = np.linalg.lstsq(rel[:, None], offsets, rcond=None)[0][0]
    angle = math.degrees(math.atan(float(np.hypot(*slope))))
    shift = float(np.max(np.hypot(offsets[:, 0], offsets[:, 1])))
    return (
        f"{name}: the slices are stacked {angle:.1f} degrees off their normal (gantry tilt); "
        f"resampled onto an orthogonal grid as dcm2niix does, each slice shifted in its plane "
        f"(up to {shift:.1f} mm, linear interpolation; what comes in from outside the field of "
        "view is the image minimum)."
    )


def _resample(stack: np.ndarray, rel: np.ndarray, shifts: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Sample the stack at depths ``grid``: each slice shifted in-plane back onto slice 0's
    columns (``shifts``: (cols, rows) in pixels), then linear along the normal."""
    from scipy import ndimage

    fill = float(stack.min())
    work = stack.astype(np.float32)
    if np.any(np.abs(shifts) > 0):
        for k in range(len(work)):
            if stack.ndim == 3:
                work[k] = ndimage.shift(
                    work[k], (shifts[k, 1], shifts[k, 0]), order=1, mode="constant", cval=fill
                )
            else:
                work[k] = ndimage.shift(
                    work[k], (shifts[k, 1], shifts[k, 0], 0), order=1, mode="constant", cval=fill
                )
    upper = np.clip(np.searchsorted(rel, grid, side="right"), 1, len(rel) - 1)
    lower = upper - 1
    weight = np.clip((grid - rel[lower]) / (rel[upper] - rel[lower]), 0.0, 1.0)
    shape = (-1,) + (1,) * (stack.ndim - 1)
    out = work[lower] * (1 - weight).reshape(shape) + work[upper] * weight.reshape(shape)
    if np.issubdtype(stack.dtype, np.integer):
        info = np.iinfo(stack.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(stack.dtype)


# ---- single slices and files without positions -------------------------------------------------


def _single(plane: np.ndarray, s: _Slice, frame: np.ndarray, name: str, notes: list[str]) -> DicomScan:
    """One slice as a 2D image, turned (not resampled) to read like a clinical viewer:
    the axis nearest superior-inferior (else anterior-posterior) runs down the screen."""
    dy, dx = s.pixel_spacing
    axes = [frame[1].copy(), frame[0].copy()]  # array axis 0 runs along c, axis 1 along r
    spacing = [dy, dx]
    # the dominant LPS letter of each axis (0 L, 1 P, 2 S): the down axis is the one nearer S, else P
    if np.argmax(np.abs(axes[1])) > np.argmax(np.abs(axes[0])):
        plane = np.swapaxes(plane, 0, 1)
        axes, spacing = axes[::-1], spacing[::-1]
    origin = s.position.copy()
    for axis in range(2):
        v = axes[axis]
        dominant = int(np.argmax(np.abs(v)))
        wanted = -1.0 if dominant == 2 else 1.0  # down the screen: inferior, posterior; across: left
        if np.sign(v[dominant]) != wanted:
            origin = origin + axes[axis] * spacing[axis] * (plane.shape[axis] - 1)
            axes[axis] = -v
            plane = np.flip(plane, axis)
    sitk = _sitk()
    image = sitk.GetImageFromArray(np.ascontiguousarray(plane), isVector=plane.ndim == 3)
    image.SetSpacing((float(spacing[1]), float(spacing[0])))
    image.SetOrigin((float(origin @ axes[1]), float(origin @ axes[0])))
    normal = np.cross(axes[1], axes[0])
    view = ("axial", "coronal", "sagittal")[int(np.argmax(np.abs(normal[[2, 1, 0]])))]
    notes.append(
        f"{name}: a single {view} slice, opened as a 2D image in its plane (its place "
        "in the patient is kept with the layer)."
    )
    return DicomScan(
        image,
        notes,
        {
            "origin": [float(v) for v in origin],
            "axes": [[float(v) for v in a] for a in axes],
            "spacing": [float(v) for v in spacing],
        },
    )


def _unplaced(slices, arrays, step, name, notes) -> DicomScan:
    """Frames or slices without ImagePositionPatient/ImageOrientationPatient: file order."""
    sitk = _sitk()
    sizes = {}
    for s in slices:
        sizes.setdefault(s.size, []).append(s)
    slices = max(sizes.values(), key=len)
    if len(sizes) > 1:
        notes.append(
            f"{name}: left out {_count(sum(map(len, sizes.values())) - len(slices), 'slice')}"
            " of another size than the rest."
        )
    stack = _stack(sorted(slices, key=lambda s: (s.instance, s.frame, s.path.name)), arrays)
    dy, dx = slices[0].pixel_spacing
    if len(slices) == 1:
        plane = stack[0]
        image = sitk.GetImageFromArray(plane, isVector=plane.ndim == 3)
        image.SetSpacing((dx, dy))
        notes.append(
            f"{name}: the image has no patient position or orientation; shown at the origin in file order."
        )
        return DicomScan(image, notes)
    image = sitk.GetImageFromArray(stack, isVector=stack.ndim == 4)
    image.SetSpacing((dx, dy, step or 1.0))
    notes.append(
        f"{name}: the slices have no patient position or orientation; stacked in file "
        f"order at the origin, {step or 1.0:g} mm apart"
        f"{' (from the slice spacing tag)' if step else ' (assumed)'}, not placed in the "
        "patient."
    )
    return DicomScan(image, notes)
