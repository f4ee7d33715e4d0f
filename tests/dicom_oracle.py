"""pydicom as the oracle of where DICOM voxels are, and the cases of odd series.

World points are LPS mm. ``world`` maps an index of an ``io.Volume`` the way a viewer places it
(origin + direction @ (spacing * index), array order (z, y, x); for a single slice the 3D plane
kept in ``source["plane"]``). pydicom's position of pixel (row, col) of a frame is
ImagePositionPatient + row * PixelSpacing[0] * IOP[3:] + col * PixelSpacing[1] * IOP[:3].
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "dicom"
MARKER = 1000


def _frame_geometry(ds) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(position, orientation (6,), pixel spacing (2,)) per frame, from pydicom."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        out = []
        for item in ds.PerFrameFunctionalGroupsSequence:

            def pick(seq, key):
                for source in (item, shared):  # noqa: B023 (called in this iteration)
                    if seq in source and key in source[seq].value[0]:
                        return np.array(source[seq].value[0][key].value, float)
                raise KeyError(key)

            out.append(
                (
                    pick("PlanePositionSequence", "ImagePositionPatient"),
                    pick("PlaneOrientationSequence", "ImageOrientationPatient"),
                    pick("PixelMeasuresSequence", "PixelSpacing"),
                )
            )
        return out
    return [
        (
            np.array(ds.ImagePositionPatient, float),
            np.array(ds.ImageOrientationPatient, float),
            np.array(ds.PixelSpacing, float),
        )
    ] * frames


def pixel_lps(geometry, row: float, col: float) -> np.ndarray:
    position, iop, spacing = geometry
    return position + row * spacing[0] * iop[3:] + col * spacing[1] * iop[:3]


def _pixels(ds) -> np.ndarray:
    """Stored values through the modality LUT (rescale), per frame (enhanced files keep it in the
    shared functional groups)."""
    array = ds.pixel_array.astype(float)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
    if "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in shared:
            item = shared.PixelValueTransformationSequence[0]
            slope, intercept = float(item.RescaleSlope), float(item.RescaleIntercept)
    return (array * slope + intercept).reshape((frames,) + array.shape[-2:])


def markers(paths) -> list[tuple[float, np.ndarray]]:
    """(value, LPS point) of every marker voxel (>= 1000) in the files."""
    import pydicom

    found = []
    for path in paths:
        ds = pydicom.dcmread(path)
        geometry = _frame_geometry(ds)
        for f, r, c in zip(*np.nonzero(_pixels(ds) >= MARKER), strict=True):
            found.append((float(_pixels(ds)[f, r, c]), pixel_lps(geometry[f], r, c)))
    return found


def world(volume, index) -> np.ndarray:
    """LPS point of a (fractional) array index of an io.Volume."""
    index = np.asarray(index, float)
    plane = volume.source.get("plane")
    if plane:
        axes = np.asarray(plane["axes"], float)
        return np.asarray(plane["origin"], float) + (index * np.asarray(plane["spacing"])) @ axes
    zyx = np.asarray(volume.origin, float) + np.asarray(volume.direction, float) @ (
        np.asarray(volume.spacing, float) * index
    )
    return zyx[::-1]


def marker_errors(volume, expected) -> np.ndarray:
    """Distance (mm) from each expected marker to where the volume shows it, nearest first.

    A marker is a blob of non-zero voxels (background is 0); it is shown at the value-weighted
    centroid of the blob's voxels in its brightest slice (array axis 0): exact for markers moved
    by an in-plane shift, and on the nearest grid plane for slices interpolated along the normal
    (whose neighbours take a fainter copy)."""
    from scipy import ndimage

    array = np.asarray(volume.array, float)
    if array.ndim == 2:
        array = array[None]
    labels, count = ndimage.label(array > 0, structure=np.ones((3,) * array.ndim))
    if count == 0:
        return np.full(len(expected), np.inf)
    points = []
    for blob in ndimage.find_objects(labels):
        values = np.where(labels[blob] == labels[blob].max(), array[blob], 0.0)
        peak = int(np.argmax(values.max(axis=(1, 2))))
        centroid = np.array(ndimage.center_of_mass(values[peak]))
        index = np.array([blob[0].start + peak, blob[1].start + centroid[0], blob[2].start + centroid[1]])
        points.append(world(volume, index if np.asarray(volume.array).ndim == 3 else index[1:]))
    points = np.array(points)
    return np.array([np.min(np.linalg.norm(points - p, axis=1)) for _, p in expected])


def sample_errors(volume, path, count: int = 60, seed: int = 0) -> np.ndarray:
    """For corner and random pixels of a real file: the distance (mm) from pydicom's point to the
    volume voxel found there, or inf where that voxel does not hold pydicom's value."""
    import pydicom

    ds = pydicom.dcmread(path)
    geometry, pixels = _frame_geometry(ds), _pixels(ds)
    frames, rows, cols = pixels.shape
    rng = np.random.default_rng(seed)
    picks = [(f, r, c) for f in {0, frames - 1} for r in (0, rows - 1) for c in (0, cols - 1)]
    picks += [
        (int(rng.integers(frames)), int(rng.integers(rows)), int(rng.integers(cols))) for _ in range(count)
    ]
    array = np.asarray(volume.array)
    plane = volume.source.get("plane")
    if plane:
        origin = np.asarray(plane["origin"], float)
        basis = np.asarray(plane["axes"], float) * np.asarray(plane["spacing"])[:, None]
    else:
        origin = np.asarray(volume.origin, float)[::-1]
        basis = (np.asarray(volume.direction, float) * np.asarray(volume.spacing, float)).T[:, ::-1]
    errors = []
    for f, r, c in picks:
        point = pixel_lps(geometry[f], r, c)
        index = np.linalg.lstsq(basis.T, point - origin, rcond=None)[0]
        nearest = np.rint(index).astype(int)
        if np.any(nearest < 0) or np.any(nearest >= array.shape):
            errors.append(np.inf)
            continue
        same = np.isclose(float(array[tuple(nearest)]), float(pixels[f, r, c]), rtol=1e-4, atol=1e-3)
        errors.append(float(np.linalg.norm(world(volume, nearest) - point)) if same else np.inf)
    return np.array(errors)


# ---- cases ---------------------------------------------------------------------------------------


def testdata(name: str) -> str:
    from pydicom.data import get_testdata_file

    return get_testdata_file(name)


def folder_with_foreign_files(tmp: Path) -> Path:
    """The axial series plus an RT dose, a SEG, an SR, a DICOMDIR, a truncated MR and a text file."""
    folder = tmp / "with_foreign"
    shutil.copytree(DATA / "axial", folder)
    for name in ("rtdose.dcm", "liver.dcm", "reportsi.dcm", "MR_truncated.dcm"):
        shutil.copy(testdata(name), folder / name)
    shutil.copy(Path(testdata("rtdose.dcm")).parent / "dicomdirtests" / "DICOMDIR", folder / "DICOMDIR")
    (folder / "notes.txt").write_text("scanned on tuesday\n")
    return folder


def folder_with_corrupt_slice(tmp: Path) -> Path:
    """The axial series with one slice file cut in its pixel data (IM0003.dcm)."""
    folder = tmp / "corrupt"
    shutil.copytree(DATA / "axial", folder)
    victim = folder / "IM0003.dcm"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 1500])
    return folder


def single_file(tmp: Path, name: str) -> Path:
    """A pydicom test file alone in a folder (the test folder holds copies of it)."""
    folder = tmp / Path(name).stem
    folder.mkdir()
    shutil.copy(testdata(name), folder / name)
    return folder / name


def folder_with_undecodable_slice(tmp: Path) -> Path:
    """The axial series with one slice whose header reads but whose pixels do not decode
    (IM0005.dcm: JPEG-LS transfer syntax over garbage bytes)."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    folder = tmp / "undecodable"
    shutil.copytree(DATA / "axial", folder)
    victim = folder / "IM0005.dcm"
    ds = pydicom.dcmread(victim)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8" + b"garbage!" * 20])
    ds["PixelData"].VR = "OB"
    ds.save_as(victim, enforce_file_format=True)
    return folder
