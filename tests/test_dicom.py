"""DICOM: every voxel where pydicom says it is, and every odd series told to the user.

The series under tests/data/dicom (see its README) carry marker voxels; pydicom gives each
marker's world point from ImagePositionPatient, ImageOrientationPatient and PixelSpacing, and
the point the Volume gives it (origin + direction @ (spacing * index)) must match. Real files from
pydicom's own test data are sampled at corners and random pixels.
"""

from __future__ import annotations

import shutil
import warnings

import dicom_oracle as oracle
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import one_sentence, write_dicom_series

from napari_attunet import InputError
from napari_attunet.scans import dicom_tags, io

DATA = oracle.DATA
EXACT_MM = 0.01

warnings.filterwarnings("ignore", module="pydicom")


def files(name):
    return sorted((DATA / name).glob("*.dcm"))


def read_with_markers(path, expected_files):
    volume = io.read(path)
    return volume, oracle.marker_errors(volume, oracle.markers(expected_files))


# ---- series placed exactly -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["axial", "oblique", "enhanced_ct.dcm"])
def test_regular_series_markers_land_where_pydicom_says(name):
    path = DATA / name
    expected = [path] if path.is_file() else files(name)
    volume, errors = read_with_markers(path, expected)
    assert volume.array.ndim == 3
    assert len(errors) >= 10 and errors.max() < EXACT_MM, errors
    assert not any("not evenly" in n or "gantry" in n for n in volume.notes), volume.notes


def test_enhanced_multiframe_is_one_volume_with_per_frame_positions():
    volume = io.read(DATA / "enhanced_ct.dcm")
    assert volume.array.shape == (6, 32, 40)
    # frames are stored shuffled: 1.5 mm apart once sorted along the normal
    assert sorted(volume.spacing)[0] == pytest.approx(0.7, abs=1e-6)
    assert 1.5 in [pytest.approx(s, abs=1e-6) for s in volume.spacing]


def test_real_enhanced_ct_from_pydicom(tmp_path):
    path = oracle.single_file(tmp_path, "eCT_Supplemental.dcm")
    volume = io.read(path)
    assert volume.array.shape == (2, 512, 512)
    errors = oracle.sample_errors(volume, path)
    assert errors.max() < EXACT_MM, errors


def test_multiframe_without_positions_is_stacked_and_says_so(tmp_path):
    path = oracle.single_file(tmp_path, "emri_small.dcm")
    volume = io.read(path)
    assert volume.array.shape == (10, 64, 64)
    assert volume.spacing[0] == pytest.approx(1.2)
    assert any("no patient position" in n and "1.2 mm" in n for n in volume.notes), volume.notes


# ---- gaps, uneven spacing, duplicates, corrupt and foreign files ---------------------------------


def test_missing_slice_is_told_and_resampled_onto_the_grid():
    volume, errors = read_with_markers(DATA / "gap", files("gap"))
    assert volume.array.shape == (12, 32, 40)
    assert volume.spacing[0] == pytest.approx(2.5)
    assert errors.max() < EXACT_MM, errors
    note = next(n for n in volume.notes if "not evenly spaced" in n)
    assert "a gap of 5.00 mm" in note and "IM0004.dcm and IM0005.dcm" in note
    assert "10.00 mm from the first slice" in note and "linear interpolation" in note
    assert "11 -> 12 slices" in note


def test_uneven_spacing_markers_within_half_a_voxel():
    volume, errors = read_with_markers(DATA / "uneven", files("uneven"))
    assert volume.spacing[0] == pytest.approx(2.0)
    assert errors.max() <= volume.spacing[0] / 2 + 1e-6, errors
    assert any("not evenly spaced" in n and "2.00 to 3.00 mm" in n for n in volume.notes)


def test_duplicate_positions_keep_the_first_and_say_so():
    volume, errors = read_with_markers(DATA / "duplicate", files("duplicate")[:-1])
    assert volume.array.shape == (8, 32, 40)
    assert errors.max() < EXACT_MM
    assert not np.any(volume.array == 2000), "the repeated slice (instance 9) must be dropped"
    note = next(n for n in volume.notes if "repeats a position" in n)
    assert "IM0008.dcm" in note and "at 50 mm along the slice normal" in note


def test_foreign_and_unreadable_files_are_skipped_and_named(tmp_path):
    folder = oracle.folder_with_foreign_files(tmp_path)
    volume, errors = read_with_markers(folder, files("axial"))
    assert volume.array.shape == (8, 32, 40)
    assert errors.max() < EXACT_MM
    note = next(n for n in volume.notes if "skipped 6 files" in n)
    for name, kind in [
        ("rtdose.dcm", "RT Dose"),
        ("liver.dcm", "SEG"),
        ("reportsi.dcm", "SR"),
        ("DICOMDIR", "DICOMDIR"),
        ("MR_truncated.dcm", "corrupt"),
        ("notes.txt", "not DICOM"),
    ]:
        assert f"{name} (" in note and kind in note, (name, note)
    # no valid slice is ever blamed
    assert not any("IM00" in n for n in volume.notes), volume.notes


def test_corrupt_slice_is_named_and_its_gap_resampled(tmp_path):
    folder = oracle.folder_with_corrupt_slice(tmp_path)
    kept = [p for p in files("axial") if p.name != "IM0003.dcm"]
    volume, errors = read_with_markers(folder, kept)
    assert volume.array.shape == (8, 32, 40)
    assert errors.max() < EXACT_MM
    assert any("IM0003.dcm" in n and "corrupt" in n for n in volume.notes), volume.notes
    assert any("a gap of 5.00 mm" in n for n in volume.notes), volume.notes


def test_slice_whose_pixels_do_not_decode_is_named_and_its_gap_resampled(tmp_path):
    folder = oracle.folder_with_undecodable_slice(tmp_path)
    kept = [p for p in files("axial") if p.name != "IM0005.dcm"]
    volume, errors = read_with_markers(folder, kept)
    assert volume.array.shape == (8, 32, 40)
    assert errors.max() < EXACT_MM
    assert any("unreadable slice" in n and "IM0005.dcm" in n for n in volume.notes), volume.notes
    assert any("a gap of 5.00 mm" in n for n in volume.notes), volume.notes


# ---- tilted and oblique ------------------------------------------------------------------------


def test_gantry_tilt_is_resampled_onto_an_orthogonal_grid():
    volume, errors = read_with_markers(DATA / "tilt", files("tilt"))
    assert errors.max() < EXACT_MM, errors
    direction = np.asarray(volume.direction)
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-9)
    note = next(n for n in volume.notes if "gantry tilt" in n)
    assert "25.0 degrees" in note and "dcm2niix" in note and "linear" in note


def test_oblique_series_direction_is_its_orientation():
    import pydicom

    volume = io.read(DATA / "oblique")
    ds = pydicom.dcmread(files("oblique")[0])
    iop = np.array(ds.ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    axes = np.asarray(volume.direction)[::-1]  # columns: array axes in LPS (x, y, z)
    for axis in (iop[:3], iop[3:], normal):
        assert np.max(np.abs(axes.T @ axis)) == pytest.approx(1.0, abs=1e-6)


# ---- single slices -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, view, down",
    [
        ("sagittal", "sagittal", (0, 0, -1)),
        ("coronal", "coronal", (0, 0, -1)),
        ("sagittal_flipped", "sagittal", (0, 0, -1)),
    ],
)
def test_single_slice_opens_2d_in_its_plane(name, view, down):
    volume, errors = read_with_markers(DATA / name, files(name))
    assert volume.array.ndim == 2
    assert errors.max() < EXACT_MM, errors
    plane = volume.source["plane"]
    assert np.allclose(plane["axes"][0], down)  # rows run down to the feet
    assert any(f"single {view} slice" in n for n in volume.notes), volume.notes
    # a file of the folder opens the same slice
    assert io.read(files(name)[0]).array.shape == volume.array.shape


@pytest.mark.parametrize(
    "name, shape",
    [("CT_small.dcm", (128, 128)), ("MR2_UNCR.dcm", (1024, 1024)), ("J2K_pixelrep_mismatch.dcm", (512, 512))],
)
def test_real_single_slices_from_pydicom(tmp_path, name, shape):
    path = oracle.single_file(tmp_path, name)
    volume = io.read(path)
    assert volume.array.shape == shape
    errors = oracle.sample_errors(volume, path)
    assert errors.max() < EXACT_MM, errors


# ---- one sentence for what is not an image series -------------------------------------------------


def test_folder_without_an_image_series(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    shutil.copy(oracle.testdata("reportsi.dcm"), folder / "a.dcm")
    (folder / "b.txt").write_text("hello")
    with pytest.raises(InputError) as info:
        io.read(folder)
    message = str(info.value)
    assert one_sentence(message) and str(folder) in message
    assert "no DICOM image series" in message and "structured report" in message


def test_empty_folder_with_series_below_points_to_the_subfolder(tmp_path):
    shutil.copytree(DATA / "axial", tmp_path / "patient" / "series1")
    with pytest.raises(InputError) as info:
        io.read(tmp_path / "patient")
    assert one_sentence(str(info.value)) and "series1" in str(info.value)


@pytest.mark.parametrize(
    "name, kind",
    [("liver.dcm", "segmentation"), ("rtdose.dcm", "RT Dose"), ("MR_truncated.dcm", "cannot be read")],
)
def test_a_file_that_is_no_image_is_one_sentence(tmp_path, name, kind):
    path = oracle.single_file(tmp_path, name)
    with pytest.raises(InputError) as info:
        io.read(path)
    assert one_sentence(str(info.value)) and kind in str(info.value) and name in str(info.value)


# ---- series written by SimpleITK, through io.read ---------------------------------------------


def test_dicom_series_folder(tmp_path, scan_array):
    folder = tmp_path / "series"
    write_dicom_series(folder, scan_array, spacing=(0.8, 0.8, 2.5), origin=(-10.0, 20.0, 30.0))
    vol = io.read(folder)
    assert vol.array.shape == scan_array.shape
    assert np.array_equal(vol.array, scan_array)
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.8), abs=1e-4)
    assert vol.origin == pytest.approx((30.0, 20.0, -10.0), abs=1e-4)
    assert vol.notes == []
    assert vol.name == "series"
    # one file of the series opens the whole series
    single = io.read(folder / "slice002.dcm")
    assert single.array.shape == scan_array.shape
    # and labels written with its geometry line up
    out = io.write(tmp_path / "labels.nii.gz", (vol.array > 0).astype(np.uint8), vol)
    back = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(back), (scan_array > 0).astype(np.uint8))
    assert back.GetSpacing() == pytest.approx((0.8, 0.8, 2.5), abs=1e-4)
    assert back.GetOrigin() == pytest.approx((-10.0, 20.0, 30.0), abs=1e-4)


def test_dicom_folder_with_two_series_opens_the_larger(tmp_path, scan_array):
    folder = tmp_path / "mixed"
    big_uid, small_uid = "1.2.826.0.1.3680043.2.1125.7.1", "1.2.826.0.1.3680043.2.1125.7.2"
    write_dicom_series(folder, scan_array, series_uid=big_uid, prefix="a")
    write_dicom_series(
        folder,
        scan_array[:3, :5, :4],
        spacing=(0.5, 0.5, 1.0),
        origin=(0.0, 0.0, 100.0),
        series_uid=small_uid,
        prefix="b",
    )
    vol = io.read(folder)
    assert vol.array.shape == scan_array.shape
    assert np.array_equal(vol.array, scan_array)
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.8), abs=1e-4)
    assert len(vol.notes) == 1
    assert small_uid in vol.notes[0]


# ---- the tag reader against pydicom ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["eCT_Supplemental.dcm", "liver.dcm", "liver_expb.dcm"])
def test_per_frame_positions_match_pydicom(name):
    import pydicom

    path = oracle.testdata(name)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    _, dataset = dicom_tags.read_dataset(path)
    frames = dicom_tags.items(dataset, (0x5200, 0x9230))
    assert len(frames) == len(ds.PerFrameFunctionalGroupsSequence)
    for ours, theirs in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        position = dicom_tags.nested(ours, (0x0020, 0x9113))[(0x0020, 0x0032)]
        assert dicom_tags.numbers(position) == pytest.approx(
            [float(v) for v in theirs.PlanePositionSequence[0].ImagePositionPatient]
        )


# ---- in napari -----------------------------------------------------------------------------------


def test_napari_opens_a_gantry_tilted_series_and_a_sagittal_slice_in_place(make_napari_viewer):
    """Layer world points (napari's data_to_world) against pydicom: a tilted series in 3D, and a
    single sagittal slice as a 2D layer whose world is its plane (in-plane mm)."""
    viewer = make_napari_viewer()
    [tilted] = viewer.open(str(DATA / "tilt"), plugin="napari-attunet")
    assert tilted.ndim == 3
    volume = io.read(DATA / "tilt")
    checked = 0
    for value, point in oracle.markers(files("tilt")):
        index = np.argwhere(np.asarray(tilted.data) == value)
        if len(index) != 1:  # a marker split by the in-plane shift: checked in the io tests
            continue
        checked += 1
        assert np.allclose(np.asarray(tilted.data_to_world(index[0]))[::-1], point, atol=EXACT_MM)
        assert np.allclose(oracle.world(volume, index[0]), point, atol=EXACT_MM)
    assert checked >= 2

    [sagittal] = viewer.open(str(DATA / "sagittal"), plugin="napari-attunet")
    assert sagittal.ndim == 2 and sagittal.data.shape == (32, 40)
    plane = io.read(DATA / "sagittal").source["plane"]
    axes = np.asarray(plane["axes"])
    for value, point in oracle.markers(files("sagittal")):
        [index] = np.argwhere(np.asarray(sagittal.data) == value)
        assert np.allclose(sagittal.data_to_world(index), axes @ point, atol=EXACT_MM)
