"""Write the odd DICOM series of tests/data/dicom with pydicom (run once; outputs are committed).

    python tests/data/dicom/make.py

Every image is 32 x 40 (rows x columns) int16, background 0, with marker voxels of unique values
(1000 + k) whose world positions the tests take from pydicom. Geometry is in LPS mm.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

HERE = Path(__file__).parent
ROWS, COLS = 32, 40
CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def uid(*parts) -> str:
    return generate_uid(entropy_srcs=["napari-attunet tests"] + [str(p) for p in parts])


def markers(slices: int, seed: int, inset: int = 1) -> list[tuple[int, int, int]]:
    """(slice, row, col) of the markers: corners of the first and last slices, and random ones."""
    rng = np.random.default_rng(seed)
    last_r, last_c = ROWS - 1 - inset, COLS - 1 - inset
    picks = [(0, inset, inset), (0, last_r, last_c), (slices - 1, inset, last_c), (slices - 1, last_r, inset)]
    for _ in range(10_000):
        if len(picks) == 10:
            break
        pick = (
            int(rng.integers(slices)),
            int(rng.integers(inset, last_r + 1)),
            int(rng.integers(inset, last_c + 1)),
        )
        if all(abs(pick[1] - p[1]) + abs(pick[2] - p[2]) > 6 for p in picks):
            picks.append(pick)
    return picks


def volume(slices: int, seed: int, inset: int = 1) -> np.ndarray:
    array = np.zeros((slices, ROWS, COLS), np.int16)
    for k, (s, r, c) in enumerate(markers(slices, seed, inset)):
        array[s, r, c] = 1000 + k
    return array


def _base(sop: str, series: str, instance_uid: str, syntax=ExplicitVRLittleEndian) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, instance_uid
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID = "Phantom^Geometry", "attunet"
    ds.StudyInstanceUID = uid(series, "study")
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = uid(series, "frame")
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    return ds


def write_series(
    folder: Path,
    array: np.ndarray,
    positions,
    orientation=AXIAL,
    pixel_spacing=(0.8, 0.7),
    instances=None,
    syntax=ExplicitVRLittleEndian,
) -> None:
    """One file per slice; ``positions`` the ImagePositionPatient of each slice."""
    folder.mkdir(parents=True, exist_ok=True)
    series = uid(folder.name, "series")
    for k, (plane, position) in enumerate(zip(array, positions, strict=True)):
        instance = instances[k] if instances else k + 1
        ds = _base(CT, series, uid(folder.name, k), syntax)
        ds.InstanceNumber = instance
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = 2.5
        ds.PixelData = np.ascontiguousarray(plane, np.int16).tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)


def write_enhanced(
    path: Path, array: np.ndarray, positions, orientation=AXIAL, pixel_spacing=(0.8, 0.7), frame_order=None
) -> None:
    """An Enhanced CT multi-frame file: orientation and pixel measures shared, positions per
    frame (frames written in ``frame_order``)."""
    order = list(frame_order) if frame_order is not None else list(range(len(array)))
    ds = _base(ENHANCED_CT, uid(path.name, "series"), uid(path.name))
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    plane = Dataset()
    plane.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
    measures = Dataset()
    measures.PixelSpacing = list(pixel_spacing)
    measures.SliceThickness = 2.5
    shared.PlaneOrientationSequence = Sequence([plane])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [round(float(v), 6) for v in positions[k]]
        item.PlanePositionSequence = Sequence([position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.ascontiguousarray(array[order], np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix of angles (degrees) about x, then y, then z."""
    a, b, c = (math.radians(v) for v in (ax, ay, az))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def along(origin, normal, steps) -> list[np.ndarray]:
    return [np.asarray(origin, float) + np.asarray(normal, float) * d for d in steps]


def main() -> None:
    for child in HERE.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
    origin = (-12.0, 30.5, 40.0)
    z = (0.0, 0.0, 1.0)

    # a plain axial series (reference), written in implicit VR and in shuffled instance order
    write_series(
        HERE / "axial",
        volume(8, 1),
        along(origin, z, np.arange(8) * 2.5),
        instances=[3, 1, 8, 2, 7, 4, 6, 5],
        syntax=ImplicitVRLittleEndian,
    )

    # a missing slice: 12 slices 2.5 mm apart with the 6th (k = 5) absent
    full = volume(12, 2, inset=2)
    keep = [k for k in range(12) if k != 5]
    full[5] = 0
    write_series(HERE / "gap", full[keep], along(origin, z, np.arange(12)[keep] * 2.5))

    # uneven spacing: 2.0 mm steps, then 3.0 mm steps
    steps = np.concatenate([np.arange(5) * 2.0, 8.0 + np.arange(1, 5) * 3.0])
    write_series(HERE / "uneven", volume(9, 3, inset=2), along(origin, z, steps))

    # a duplicate position: slice 4 written twice (second copy differs, instance number 9)
    base = volume(8, 4)
    extra = np.zeros((1, ROWS, COLS), np.int16)
    extra[0, 16, 20] = 2000
    write_series(
        HERE / "duplicate",
        np.concatenate([base, extra]),
        along(origin, z, list(np.arange(8) * 2.5) + [4 * 2.5]),
    )

    # gantry tilt: slices tilted 25 degrees about the x axis, stacked along the table (z)
    tilt = math.radians(25.0)
    tilted = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), -math.sin(tilt))
    write_series(
        HERE / "tilt", volume(10, 5, inset=12), along(origin, z, np.arange(10) * 2.5), orientation=tilted
    )

    # an oblique series: rotated 20, -15 and 30 degrees, stacked along its own normal
    rot = rotation(20.0, -15.0, 30.0)
    r, c = rot[:, 0], rot[:, 1]
    write_series(
        HERE / "oblique",
        volume(8, 6),
        along(origin, np.cross(r, c), np.arange(8) * 3.0),
        orientation=tuple(r) + tuple(c),
    )

    # enhanced multi-frame CT, oblique, frames stored out of order
    rot = rotation(-10.0, 8.0, 0.0)
    r, c = rot[:, 0], rot[:, 1]
    write_enhanced(
        HERE / "enhanced_ct.dcm",
        volume(6, 7),
        along(origin, np.cross(r, c), np.arange(6) * 1.5),
        orientation=tuple(r) + tuple(c),
        frame_order=[3, 0, 5, 1, 4, 2],
    )

    # single slices: sagittal (columns anterior->posterior, rows superior->inferior), coronal,
    # and a sagittal one stored upside down (rows inferior->superior)
    one = volume(1, 8)
    write_series(HERE / "sagittal", one, [origin], orientation=(0, 1, 0, 0, 0, -1))
    write_series(HERE / "coronal", one, [origin], orientation=(1, 0, 0, 0, 0, -1))
    write_series(HERE / "sagittal_flipped", one, [origin], orientation=(0, 0, 1, 0, 1, 0))


if __name__ == "__main__":
    main()
