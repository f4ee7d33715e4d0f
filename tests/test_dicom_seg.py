"""DICOM SEG out of a DICOM series: every frame's pixels, placed by that frame's own plane
position, orientation and spacing (read back with plain pydicom, and separately with highdicom),
hold the labels that the NIfTI of the same labels holds at those world points, class by class.

Series are pydicom's test files, the odd series of tests/data/dicom, and MR series written here
with pydicom from the bundled MNI152 template (a NIfTI of known geometry): axial, coronal,
sagittal, oblique, and with the slice files shuffled on disk.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
from helpers import BAD_TEXT, one_sentence, snapshot

import napari_attunet.scans.dicom_seg as dseg
from napari_attunet import io
from napari_attunet.cli import main
from napari_attunet.demo_data import DEMO_CHECKPOINT, DEMO_LABELS, DEMO_SCAN
from napari_attunet.errors import InputError
from napari_attunet.scans.outputs import OutputExists

pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

DICOM = pathlib.Path(__file__).parent / "data" / "dicom"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NAMES = ["background", "grey matter", "white matter"]
MR = "1.2.840.10008.5.1.4.1.1.4"


# ---- MR series written with pydicom from a NIfTI of known geometry -----------------------------


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["napari-attunet seg tests"] + [str(p) for p in parts])


def write_mr_series(folder: pathlib.Path, array: np.ndarray, lps: np.ndarray, slice_axis: int, shuffle=False):
    """One MR file per slice of ``array`` (i, j, k) along ``slice_axis``; ``lps`` maps (i, j, k, 1)
    to LPS mm. Rows run along the first remaining axis, columns along the second. Shuffled: files
    named by random numbers and instance numbers in random order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder.mkdir(parents=True)
    rows_axis, cols_axis = [a for a in range(3) if a != slice_axis]
    r, c = lps[:3, cols_axis], lps[:3, rows_axis]
    count = array.shape[slice_axis]
    rng = np.random.default_rng(7)
    instances = rng.permutation(count) + 1 if shuffle else np.arange(count) + 1
    series, study = _uid(folder.name, "series"), _uid(folder.name, "study")
    for s in range(count):
        index = np.zeros(4)
        index[slice_axis], index[3] = s, 1
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = MR, ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MR, _uid(folder.name, s)
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, int(instances[s])
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            "Template^MNI152",
            "mni152",
            "",
            "O",
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = _uid(folder.name, "frame")
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "A1", "S1"
        ds.ReferringPhysicianName, ds.SeriesDescription = "", "T1 2mm"
        ds.ImagePositionPatient = [round(float(v), 6) for v in (lps @ index)[:3]]
        ds.ImageOrientationPatient = [
            round(float(v), 8) for v in (*r / np.linalg.norm(r), *c / np.linalg.norm(c))
        ]
        ds.PixelSpacing = [float(np.linalg.norm(c)), float(np.linalg.norm(r))]
        ds.SliceThickness = float(np.linalg.norm(lps[:3, slice_axis]))
        plane = np.ascontiguousarray(np.take(array, s, axis=slice_axis), np.uint16)
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = plane.tobytes()
        name = f"{rng.integers(10**9)}.dcm" if shuffle else f"IM{s:04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
    return folder


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def mni(crop=None, rotate=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1, labels, LPS affine) of the bundled 2 mm template, cropped and rotated if asked."""
    import nibabel as nib

    t1, labels = nib.load(DEMO_SCAN), nib.load(DEMO_LABELS)
    lps = np.linalg.inv(LPS_TO_RAS) @ t1.affine
    a, b = np.asarray(t1.dataobj), np.asarray(labels.dataobj)
    if crop is not None:
        a, b = a[crop], b[crop]
        start = np.array([s.start or 0 for s in crop] + [1.0])
        lps = lps.copy()
        lps[:, 3] = lps @ start
    if rotate is not None:
        turn = np.eye(4)
        turn[:3, :3] = _rotation(*rotate)
        lps = turn @ lps
    return a, b, lps


def write_nifti(path: pathlib.Path, array: np.ndarray, lps: np.ndarray) -> pathlib.Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, LPS_TO_RAS @ lps), str(path))
    return path


CROP = (slice(30, 70), slice(35, 85), slice(30, 66))
VIEWS = {
    "axial": dict(slice_axis=2),
    "coronal": dict(slice_axis=1),
    "sagittal": dict(slice_axis=0),
    "oblique": dict(slice_axis=2, rotate=(20.0, -15.0, 30.0)),
    "shuffled": dict(slice_axis=2, shuffle=True),
}


def built_case(tmp: pathlib.Path, view: str):
    """A series built from the template crop, its labels as a NIfTI, and both read by io."""
    options = dict(VIEWS[view])
    t1, labels, lps = mni(CROP, options.pop("rotate", None))
    folder = write_mr_series(tmp / view, t1, lps, **options)
    nifti = write_nifti(tmp / f"{view}_labels.nii.gz", labels, lps)
    volume, on_grid = io.read(folder), io.read(nifti)
    assert on_grid.array.shape == volume.array.shape
    assert np.allclose(on_grid.affine, volume.affine, atol=1e-4)
    return folder, nifti, volume, on_grid.array


# ---- reading a SEG back --------------------------------------------------------------------------


def frames_by_pydicom(path):
    """(segment number or None for a label map, LPS point of every pixel (rows, cols, 3), pixels)
    per frame, from the frame's own functional groups."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    shared = ds.SharedFunctionalGroupsSequence[0]

    def group(item, name):
        return (item if name in item else shared)[name][0]

    out = []
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = np.array(group(item, "PlanePositionSequence").ImagePositionPatient, float)
        iop = np.array(group(item, "PlaneOrientationSequence").ImageOrientationPatient, float)
        spacing = np.array(group(item, "PixelMeasuresSequence").PixelSpacing, float)
        rows, cols = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        points = (
            position + (rows * spacing[0])[..., None] * iop[3:] + (cols * spacing[1])[..., None] * iop[:3]
        )
        segment = (
            int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            if "SegmentIdentificationSequence" in item
            else None
        )
        out.append((segment, points, pixels[k]))
    return ds, out


def nifti_index(nifti_path, points: np.ndarray):
    """Voxel index (integer, checked to lie on the grid) of LPS points in a NIfTI, by nibabel."""
    import nibabel as nib

    image = nib.load(str(nifti_path))
    ras = points.reshape(-1, 3) * np.array([-1.0, -1.0, 1.0])
    index = (np.linalg.inv(image.affine) @ np.c_[ras, np.ones(len(ras))].T)[:3].T
    nearest = np.rint(index)
    assert np.abs(index - nearest).max() < 1e-3, "a SEG pixel lies off the NIfTI grid"
    nearest = nearest.astype(int)
    assert (nearest >= 0).all() and (nearest < np.array(image.shape[:3])).all(), "a SEG pixel outside"
    return tuple(nearest.T), np.asarray(image.dataobj)


def placed_by_pydicom(seg_path, nifti_path, seg_type="binary") -> tuple[np.ndarray, np.ndarray]:
    """The SEG's labels (or, fractional, its probability levels per segment) on the NIfTI grid,
    placed frame by frame; and the NIfTI's labels."""
    _, frames = frames_by_pydicom(seg_path)
    reference = None
    placed: np.ndarray | None = None
    for segment, points, pixels in frames:
        index, reference = nifti_index(nifti_path, points)
        if placed is None:
            shape = reference.shape if seg_type != "fractional" else (8, *reference.shape)
            placed = np.zeros(shape, np.int32)
        values = pixels.reshape(-1)
        if seg_type == "labelmap":
            placed[index] = values
        elif seg_type == "fractional":
            placed[segment][index] = values
        else:
            hit = values > 0
            target = tuple(i[hit] for i in index)
            assert not placed[target].any(), "two binary segments overlap"
            placed[target] = segment
    assert placed is not None and reference is not None
    return placed, reference


def placed_by_highdicom(seg_path, nifti_path) -> tuple[np.ndarray, np.ndarray]:
    """highdicom's own reading: its volume (every frame placed by its position), on the NIfTI grid."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    volume = seg.get_volume(combine_segments=True, relabel=False)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape[:3]], indexing="ij"), -1).reshape(-1, 3)
    points = (volume.affine @ np.c_[grid, np.ones(len(grid))].T)[:3].T
    index, reference = nifti_index(nifti_path, points)
    placed = np.zeros(reference.shape, np.int32)
    placed[index] = volume.array.reshape(-1)
    return placed, reference


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def assert_same_labels(placed: np.ndarray, reference: np.ndarray, classes=(1, 2)) -> None:
    for k in classes:
        assert (reference == k).any(), f"class {k} absent from the reference: the test proves nothing"
        assert np.array_equal(placed == k, reference == k), (k, dice(placed == k, reference == k))


# ---- round trips on series built from the template ----------------------------------------------


@pytest.mark.parametrize("view", list(VIEWS))
def test_round_trip_on_built_series(tmp_path, view):
    folder, nifti, volume, labels = built_case(tmp_path, view)
    out, notes = dseg.write(tmp_path / "seg.dcm", labels, volume, NAMES)
    assert notes == []
    assert_same_labels(*placed_by_pydicom(out, nifti))
    assert_same_labels(*placed_by_highdicom(out, nifti))
    # every frame lies on a source slice: its ImagePositionPatient, referenced by SOP Instance UID
    sources = {
        str(d.SOPInstanceUID): np.array(d.ImagePositionPatient, float)
        for d in (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir())
    }
    ds, frames = frames_by_pydicom(out)
    for item, (_, points, _) in zip(ds.PerFrameFunctionalGroupsSequence, frames, strict=True):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.array_equal(points[0, 0], sources[str(ref)])
    referenced = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert {str(r.ReferencedSOPInstanceUID) for r in referenced} == set(sources)


@pytest.mark.parametrize("seg_type", ["labelmap", "fractional"])
def test_labelmap_and_fractional_round_trip(tmp_path, seg_type):
    folder, nifti, volume, labels = built_case(tmp_path, "oblique")
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, size=(2, *labels.shape)).astype(np.uint8)
    out, _ = dseg.write(
        tmp_path / "seg.dcm", labels, volume, NAMES, seg_type=seg_type, probabilities=levels / 255.0
    )
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    assert ds.SegmentationType == seg_type.upper()
    placed, reference = placed_by_pydicom(out, nifti, seg_type)
    if seg_type == "labelmap":
        assert str(ds.SOPClassUID) == dseg.LABELMAP_SOP_CLASS
        assert_same_labels(placed, reference)
        assert_same_labels(*placed_by_highdicom(out, nifti))
        return
    assert ds.SegmentationFractionalType == "PROBABILITY" and int(ds.MaximumFractionalValue) == 255
    for k in (1, 2):
        expected = _levels_on_nifti_grid(levels[k - 1], volume, nifti)
        assert np.array_equal(placed[k], expected)


def _levels_on_nifti_grid(levels: np.ndarray, volume, nifti) -> np.ndarray:
    """Values given on the Volume's grid, moved to the NIfTI's voxel order by world position."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in levels.shape], indexing="ij"), -1).reshape(-1, 3)
    points = (volume.affine @ np.c_[grid, np.ones(len(grid))].T)[:3].T[:, ::-1]  # napari world -> LPS
    index, reference = nifti_index(nifti, points)
    out = np.zeros(reference.shape, np.int32)
    out[index] = levels.reshape(-1)
    return out


# ---- the odd series of tests/data/dicom and pydicom's files ----------------------------------------


SERIES = ["axial", "oblique", "enhanced_ct.dcm", "duplicate", "gap", "uneven", "tilt"]


def marker_labels(volume) -> np.ndarray:
    array = np.asarray(volume.array)
    labels = (array > 0).astype(np.uint8)
    labels[(array >= 1000) & (array % 2 == 0)] = 2
    return labels


@pytest.mark.parametrize("name", SERIES)
def test_round_trip_on_odd_series(tmp_path, name):
    volume = io.read(DICOM / name)
    labels = marker_labels(volume)
    nifti = io.write(tmp_path / "labels.nii.gz", labels, volume)
    out, notes = dseg.write(tmp_path / "seg.dcm", labels, volume, NAMES)
    assert_same_labels(*placed_by_pydicom(out, nifti))
    assert_same_labels(*placed_by_highdicom(out, nifti))
    resampled = any("resampled onto" in n for n in volume.notes)
    assert any("uniform grid" in n for n in notes) == resampled
    if not resampled:  # a marker's SEG pixel is where pydicom puts the marker of the source
        _markers_land_on_source(DICOM / name, out)


def _markers_land_on_source(source, seg_path) -> None:
    import dicom_oracle as oracle

    paths = [source] if source.is_file() else sorted(source.iterdir())
    # duplicate/: the 9th file repeats a position and the reader keeps the first (its marker 2000 is
    # in no scan voxel)
    expected = [(v, p) for v, p in oracle.markers(paths) if v != 2000]
    _, frames = frames_by_pydicom(seg_path)
    points = np.concatenate([p[px > 0] for _, p, px in frames])
    values = np.concatenate([np.full(int((px > 0).sum()), s) for s, _, px in frames])
    for value, point in expected:
        distance = np.linalg.norm(points - point, axis=1)
        k = int(np.argmin(distance))
        assert distance[k] < 1e-3 and values[k] == (2 if int(value) % 2 == 0 else 1)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR2_UNCR.dcm", "eCT_Supplemental.dcm"])
def test_pydicom_test_files(tmp_path, name):
    """Real files: a CT slice, an oblique sagittal MR slice (2D: one frame in the slice's own plane,
    which the reader turned to read like a viewer), and an Enhanced CT multi-frame."""
    import dicom_oracle as oracle

    path = oracle.single_file(tmp_path, name)
    volume = io.read(path)
    array = np.asarray(volume.array, float)
    labels = (array > np.percentile(array, 60)).astype(np.uint8) + (array > np.percentile(array, 90))
    out, _ = dseg.write(tmp_path / "seg.dcm", labels.astype(np.uint8), volume, NAMES)
    # each SEG pixel at its own position holds the class of the source pixel pydicom puts there
    source = pydicom.dcmread(path)
    geometry, pixels = oracle._frame_geometry(source), oracle._pixels(source)
    low, high = np.percentile(array, 60), np.percentile(array, 90)
    _, frames = frames_by_pydicom(out)
    frame_points = [
        np.stack([oracle.pixel_lps(g, 0, 0), oracle.pixel_lps(g, 1, 0), oracle.pixel_lps(g, 0, 1)])
        for g in geometry
    ]
    checked = 0
    for segment, points, seg_pixels in frames:
        f = int(np.argmin([np.linalg.norm(fp[0] - points[0, 0]) for fp in frame_points]))
        assert np.linalg.norm(frame_points[f][0] - points[0, 0]) < 1e-3  # the frame is a source frame
        truth = (pixels[f] > low).astype(int) + (pixels[f] > high)
        assert np.array_equal(seg_pixels > 0, truth == segment)
        checked += 1
    assert checked >= 2


# ---- what a SEG carries --------------------------------------------------------------------------


def test_uids_patient_study_segments_and_algorithm(tmp_path):
    folder, _, volume, labels = built_case(tmp_path, "axial")
    algorithm = dseg.Algorithm.of_checkpoint(DEMO_CHECKPOINT)
    out, _ = dseg.write(tmp_path / "seg.dcm", labels, volume, NAMES, algorithm=algorithm)
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    source = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert str(ds.SOPClassUID) == dseg.SEG_SOP_CLASS and ds.SegmentationType == "BINARY"
    for key in (
        "StudyInstanceUID",
        "FrameOfReferenceUID",
        "PatientName",
        "PatientID",
        "StudyDate",
        "PatientSex",
    ):
        assert str(ds[key].value) == str(source[key].value), key
    assert ds.PatientBirthDate in ("", None)  # empty in the source: copied empty, never made up
    assert str(ds.SeriesInstanceUID) != str(source.SeriesInstanceUID)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == NAMES[1:]
    for segment in ds.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        ident = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert ident.AlgorithmName == "napari-attunet"
        assert ident.AlgorithmVersion == algorithm.version and algorithm.version
        assert DEMO_CHECKPOINT.name in ident.AlgorithmParameters
        assert algorithm.sha256 in ident.AlgorithmParameters and len(algorithm.sha256) == 64
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"
    manual, _ = dseg.write(tmp_path / "manual.dcm", labels, volume, NAMES)
    painted = pydicom.dcmread(manual, stop_before_pixels=True)
    assert {s.SegmentAlgorithmType for s in painted.SegmentSequence} == {"MANUAL"}
    assert "SegmentationAlgorithmIdentificationSequence" not in painted.SegmentSequence[0]


def test_class_codes_per_class(tmp_path):
    _, _, volume, labels = built_case(tmp_path, "axial")
    codes = {
        "white matter": {"category": "SCT:91723000:Anatomical Structure", "type": "SCT:68523003:White matter"}
    }
    out, _ = dseg.write(tmp_path / "seg.dcm", labels, volume, NAMES, codes=codes)
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    grey, white = ds.SegmentSequence
    assert grey.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"
    assert white.SegmentedPropertyTypeCodeSequence[0].CodeValue == "68523003"
    assert white.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"


def test_a_class_without_voxels_is_described_and_said(tmp_path):
    _, nifti, volume, labels = built_case(tmp_path, "axial")
    labels = np.where(labels == 2, 0, labels).astype(np.uint8)
    out, notes = dseg.write(tmp_path / "seg.dcm", labels, volume, NAMES)
    assert len(notes) == 1 and one_sentence(notes[0]) and "'white matter' has no voxels" in notes[0]
    ds, frames = frames_by_pydicom(out)
    assert len(ds.SegmentSequence) == 2 and {s for s, _, _ in frames} == {1}
    placed, reference = placed_by_pydicom(out, nifti)
    assert np.array_equal(placed == 1, reference == 1) and not (placed == 2).any()


# ---- bad input -------------------------------------------------------------------------------


def test_a_non_dicom_scan_is_refused(tmp_path):
    volume = io.read(DEMO_SCAN)
    with pytest.raises(InputError) as info:
        dseg.write(tmp_path / "seg.dcm", np.zeros(volume.array.shape, np.uint8), volume, NAMES)
    assert one_sentence(str(info.value)) and "DICOM" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_source_without_frame_of_reference_is_refused(tmp_path):
    folder = tmp_path / "nofor"
    shutil.copytree(DICOM / "axial", folder)
    victim = folder / "IM0003.dcm"
    ds = pydicom.dcmread(victim)
    del ds.FrameOfReferenceUID
    ds.save_as(victim)
    volume = io.read(folder)
    with pytest.raises(InputError) as info:
        dseg.write(tmp_path / "seg.dcm", marker_labels(volume), volume, NAMES)
    message = str(info.value)
    assert one_sentence(message) and "FrameOfReferenceUID" in message and "IM0003.dcm" in message
    assert not (tmp_path / "seg.dcm").exists()


def test_an_existing_seg_is_kept_without_overwrite(tmp_path):
    volume = io.read(DICOM / "axial")
    target = tmp_path / "seg.dcm"
    target.write_bytes(b"keep me")
    with pytest.raises(OutputExists) as info:
        dseg.write(target, marker_labels(volume), volume, NAMES)
    assert one_sentence(str(info.value)) and target.read_bytes() == b"keep me"
    dseg.write(target, marker_labels(volume), volume, NAMES, overwrite=True)
    assert pydicom.dcmread(target).Modality == "SEG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]  # no staging left


def test_a_full_disk_leaves_the_old_seg_and_nothing_partial(tmp_path):
    from helpers import _fill, _no_staging, _tmpfs

    _, _, volume, labels = built_case(tmp_path, "axial")
    with _tmpfs(tmp_path / "disk", "512k") as disk:
        target = disk / "seg.dcm"
        target.write_bytes(b"yesterday's SEG")
        _fill(disk, 8 << 10)
        before = snapshot(disk)
        with pytest.raises(InputError) as info:
            dseg.write(target, labels, volume, NAMES, overwrite=True)
        assert one_sentence(str(info.value)) and "disk is full" in str(info.value)
        assert snapshot(disk) == before
        _no_staging(disk)


# ---- the command line --------------------------------------------------------------------------


def _predict(capsys, *argv) -> tuple[int, str]:
    code = main(["predict", *map(str, argv), "-c", str(DEMO_CHECKPOINT), "-q"])
    return code, capsys.readouterr().err


def test_cli_mni152_series_seg_agrees_with_nifti(tmp_path, capsys):
    """Done when: a 2 mm MR series built from the bundled MNI152 template, predicted with NIfTI and
    SEG output: each class's SEG segment, its frames placed by their plane positions, agrees with
    the NIfTI labels of the same run at Dice >= 0.999 (they are equal)."""
    t1, _, lps = mni()
    folder = write_mr_series(tmp_path / "mni152_mr", t1, lps, slice_axis=2, shuffle=True)
    out = tmp_path / "out"
    code, err = _predict(capsys, folder, "-o", out, "--format", ".nii.gz", "--format", "dicom-seg")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "mni152_mr_labels.nii.gz",
        "mni152_mr_seg.dcm",
        "volumes.csv",
    ]
    seg, nifti = out / "mni152_mr_seg.dcm", out / "mni152_mr_labels.nii.gz"
    for placed, reference in (placed_by_pydicom(seg, nifti), placed_by_highdicom(seg, nifti)):
        scores = {NAMES[k]: dice(placed == k, reference == k) for k in (1, 2)}
        print(f"MNI152 2 mm MR series, SEG vs NIfTI Dice per class: {scores}")
        assert all(s >= 0.999 for s in scores.values()) and (reference > 0).sum() > 10_000
    ds = pydicom.dcmread(seg, stop_before_pixels=True)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == NAMES[1:]
    assert len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == t1.shape[2]


@pytest.mark.parametrize("seg_type", ["labelmap", "fractional"])
def test_cli_seg_types(tmp_path, capsys, seg_type):
    out = tmp_path / "out"
    code, err = _predict(capsys, DICOM / "axial", "-o", out, "--format", "dicom-seg", "--seg-type", seg_type)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["axial_seg.dcm", "volumes.csv"]
    ds = pydicom.dcmread(out / "axial_seg.dcm", stop_before_pixels=True)
    assert ds.SegmentationType == seg_type.upper()


def test_cli_non_dicom_scan_with_dicom_seg_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _predict(capsys, DEMO_SCAN, "-o", out, "--format", ".nii.gz", "--format", "dicom-seg")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "DICOM" in lines[0] and str(DEMO_SCAN) in lines[0] and "NIfTI" in lines[0]
    assert not BAD_TEXT.search(lines[0]) and "usage" not in err
    assert not any(out.rglob("*.dcm")) and not any(out.rglob("*.nii.gz"))


def test_cli_source_without_frame_of_reference_is_refused_before_the_run(tmp_path, capsys):
    folder = tmp_path / "nofor"
    shutil.copytree(DICOM / "axial", folder)
    for victim in folder.iterdir():
        ds = pydicom.dcmread(victim)
        del ds.FrameOfReferenceUID
        ds.save_as(victim)
    out = tmp_path / "out"
    code, err = _predict(capsys, folder, "-o", out, "--format", ".nii.gz", "--format", "dicom-seg")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "FrameOfReferenceUID" in lines[0], err
    assert not BAD_TEXT.search(lines[0]) and list(out.iterdir()) == []


def test_cli_existing_seg_is_kept_without_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "axial_seg.dcm").write_bytes(b"earlier")
    before = snapshot(out)
    code, err = _predict(capsys, DICOM / "axial", "-o", out, "--format", "dicom-seg")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--overwrite" in err
    assert snapshot(out) == before


# ---- napari: File > Save Selected Layers to a .dcm name, and a SEG dragged in --------------------


def _open_series(viewer, folder):
    (image,) = viewer.open(str(folder), plugin="napari-attunet")
    return image


def test_napari_painted_layer_saves_as_manual_seg_and_opens_back_in_place(tmp_path, make_napari_viewer):
    from napari_attunet.plugin.transforms import data_to_world, layer_state

    folder, nifti, _, truth = built_case(tmp_path, "oblique")
    viewer = make_napari_viewer()
    image = _open_series(viewer, folder)
    painted = viewer.add_labels(  # as napari's "New labels layer": the scan's grid
        np.zeros(image.data.shape, np.uint8),
        name="painted",
        scale=image.scale,
        translate=image.translate,
        affine=image.affine,
    )
    painted.data = truth  # as if painted by hand: the template's classes
    target = tmp_path / "painted.dcm"
    assert painted.save(str(target), plugin="napari-attunet") == [str(target)]
    ds = pydicom.dcmread(target, stop_before_pixels=True)
    assert str(ds.SOPClassUID) == dseg.SEG_SOP_CLASS
    assert {s.SegmentAlgorithmType for s in ds.SegmentSequence} == {"MANUAL"}
    assert_same_labels(*placed_by_pydicom(target, nifti))
    # dragged back in: a Labels layer on the series' grid, voxel for voxel
    (opened,) = viewer.open(str(target), plugin="napari-attunet")
    assert opened._type_string == "labels" and opened.data.shape == image.data.shape
    assert np.array_equal(np.asarray(opened.data), truth)
    assert np.allclose(data_to_world(layer_state(opened)), data_to_world(layer_state(image)))
    assert list(opened.features["class"]) == ["background", "label 1", "label 2"]


def test_napari_seg_without_its_series_opens_at_its_place(tmp_path, make_napari_viewer):
    from napari_attunet.plugin.transforms import data_to_world, layer_state

    folder, nifti, volume, truth = built_case(tmp_path, "sagittal")
    out, _ = dseg.write(tmp_path / "seg.dcm", truth, volume, NAMES)
    viewer = make_napari_viewer()
    (opened,) = viewer.open(str(out), plugin="napari-attunet")
    assert list(opened.features["class"]) == NAMES
    # every labelled voxel of the layer lies where the NIfTI holds that class (empty frames are zeros)
    data = np.asarray(opened.data)
    affine = data_to_world(layer_state(opened))
    index = np.argwhere(data > 0)
    world = (affine[:3, :3] @ index.T + affine[:3, 3:]).T[:, ::-1]
    where, reference = nifti_index(nifti, world)
    assert np.array_equal(reference[where], data[tuple(index.T)])
    assert int((data > 0).sum()) == int((reference > 0).sum())


def test_napari_prediction_saves_as_automatic_seg_naming_the_checkpoint(
    tmp_path, make_napari_viewer, qtbot, checkpoint, _isolated_config
):
    from helpers import _run_on_scan

    from napari_attunet.models.checkpoint import sha256

    viewer, widget = _run_on_scan(make_napari_viewer, qtbot, DICOM / "axial", checkpoint)
    result = viewer.layers["axial attunet"]
    target = tmp_path / "result.dcm"
    result.save(str(target), plugin="napari-attunet")
    ds = pydicom.dcmread(target, stop_before_pixels=True)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["organ", "lesion"]
    segment = ds.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    parameters = segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    assert checkpoint.name in parameters and sha256(checkpoint) in parameters
    # painted on afterwards: SEMIAUTOMATIC
    result.paint((0, 0, 0), 1 + int(result.data[0, 0, 0] == 1))  # a label it does not hold yet
    result.save(str(target), plugin="napari-attunet")
    again = pydicom.dcmread(target, stop_before_pixels=True)
    assert {s.SegmentAlgorithmType for s in again.SegmentSequence} == {"SEMIAUTOMATIC"}


def test_napari_labels_over_a_nifti_scan_refuse_a_seg_in_one_sentence(tmp_path, make_napari_viewer):
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(DEMO_SCAN), plugin="napari-attunet")
    labels = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="mask", scale=image.scale)
    target = tmp_path / "mask.dcm"
    with pytest.raises(OSError, match="DICOM") as info:
        labels.save(str(target), plugin="napari-attunet")
    assert one_sentence(str(info.value)) and not BAD_TEXT.search(str(info.value))
    assert list(tmp_path.iterdir()) == []


def test_cli_class_codes_stored_by_convert_reach_the_seg(tmp_path, capsys):
    codes = tmp_path / "codes.json"
    codes.write_text(
        '{"white matter": {"category": "SCT:91723000:Anatomical Structure", '
        '"type": "SCT:68523003:White matter"}}'
    )
    coded = tmp_path / "coded.safetensors"
    assert main(["convert", str(DEMO_CHECKPOINT), str(coded), "--class-codes", str(codes)]) == 0
    again = tmp_path / "again.safetensors"  # a later conversion keeps them
    assert main(["convert", str(coded), str(again)]) == 0
    out = tmp_path / "out"
    code = main(
        ["predict", str(DICOM / "axial"), "-c", str(again), "-o", str(out), "-q", "--format", "dicom-seg"]
    )
    assert code == 0, capsys.readouterr().err
    grey, white = pydicom.dcmread(out / "axial_seg.dcm", stop_before_pixels=True).SegmentSequence
    assert white.SegmentedPropertyTypeCodeSequence[0].CodeValue == "68523003"
    assert white.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert grey.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # the generic default
    parameters = white.SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    assert again.name in parameters
    capsys.readouterr()
    bad = main(
        [
            "convert",
            str(DEMO_CHECKPOINT),
            str(tmp_path / "bad.safetensors"),
            "--class-codes",
            '{"csf": {"type": "SCT:1:x"}}',
        ]
    )
    err = capsys.readouterr().err
    assert bad == 1 and len(err.strip().splitlines()) == 1 and "'csf'" in err
    assert not (tmp_path / "bad.safetensors").exists()


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_evaluate_takes_a_seg_as_either_side(tmp_path, capsys, seg_type):
    """`evaluate` reads a DICOM SEG like any label file: the SEG of a run against the NIfTI labels
    of the same run agrees exactly (Dice 1, HD95 0), whichever side it is on, with the SEG's
    segment labels as class names; a FRACTIONAL SEG is refused in one sentence."""
    import napari_attunet as na

    t1, _, lps = mni(crop=(slice(20, 60), slice(30, 80), slice(30, 70)))
    folder = write_mr_series(tmp_path / "mr", t1, lps, slice_axis=2)
    out = tmp_path / "out"
    code, err = _predict(capsys, folder, "-o", out, "--format", ".nii.gz", "--format", "dicom-seg")
    code, err = (
        (code, err)
        if seg_type == "binary"
        else _predict(
            capsys, folder, "-o", out, "--format", "dicom-seg", "--seg-type", seg_type, "--overwrite"
        )
    )
    assert code == 0, err
    seg, nifti = out / "mr_seg.dcm", out / "mr_labels.nii.gz"
    for rows in (na.evaluate(nifti, seg), na.evaluate(seg, nifti)):
        assert [r.name for r in rows] == NAMES[1:]
        assert all(r.dice == 1.0 and r.hd95_mm == 0.0 for r in rows), rows
        assert all(r.volume_pred_ml == pytest.approx(r.volume_ref_ml) and r.volume_ref_ml > 0 for r in rows)
    code, err = _predict(
        capsys, folder, "-o", out, "--format", "dicom-seg", "--seg-type", "fractional", "--overwrite"
    )
    assert code == 0, err
    with pytest.raises(na.InputError, match="FRACTIONAL SEG"):
        na.evaluate(nifti, seg)
