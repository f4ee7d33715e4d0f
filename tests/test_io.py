"""Scans in and out: ``napari_attunet.scans.io.read`` and ``io.write`` on real files written by
SimpleITK (NIfTI, NRRD, MHA/MHD), with non-trivial geometry, and bad files. DICOM series are
in test_dicom.py.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import RAS, one_sentence, sitk_image

import napari_attunet as na
from napari_attunet import io

SUFFIXES = [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"]
SPACING_ITK = (0.8, 0.8, 2.5)  # x, y, z
ORIGIN_ITK = (12.5, -30.0, 47.0)


def _world_check(volume: io.Volume, original, samples: int = 25, seed: int = 1) -> None:
    """Canonical voxel (k, j, i) lies at origin + spacing * index (array order, LPS) and holds
    the value the original image has at that world position."""
    rng = np.random.default_rng(seed)
    direction = np.asarray(volume.direction, dtype=float)
    for _ in range(samples):
        index = tuple(int(rng.integers(0, n)) for n in volume.array.shape)
        # array order (z, y, x) -> world (x, y, z), as ITK counts
        offset = direction @ (np.asarray(index, float) * np.asarray(volume.spacing))
        world_zyx = np.asarray(volume.origin) + offset
        world_xyz = tuple(float(v) for v in world_zyx[::-1])
        source_index = original.TransformPhysicalPointToIndex(world_xyz)
        assert original[source_index] == volume.array[index], (index, source_index)


def _assert_same_geometry(image, reference, tol=1e-5) -> None:
    assert image.GetSize() == reference.GetSize()
    assert np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=tol)
    assert np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=tol)
    assert np.allclose(image.GetDirection(), reference.GetDirection(), atol=tol)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_read_reorients_and_write_restores(tmp_path, scan_array, suffix):
    original = sitk_image(scan_array, SPACING_ITK, ORIGIN_ITK, RAS)
    src = tmp_path / "in" / f"scan{suffix}"
    src.parent.mkdir()
    sitk.WriteImage(original, str(src))
    on_disk = sitk.ReadImage(str(src))

    vol = io.read(src)
    assert vol.array.shape == scan_array.shape  # (z, y, x)
    assert vol.array.dtype == np.int16
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.8), abs=1e-6)
    assert vol.source["orientation"] == "RAS"
    assert vol.name == "scan"
    # canonical LPS: the RAS file's x and y axes are mirrored
    assert np.array_equal(vol.array, scan_array[:, ::-1, ::-1])
    assert np.allclose(vol.direction, np.eye(3))
    nz, ny, nx = scan_array.shape
    corner = on_disk.TransformIndexToPhysicalPoint((nx - 1, ny - 1, 0))
    assert vol.origin == pytest.approx(tuple(reversed(corner)), abs=1e-5)
    assert vol.origin == pytest.approx((47.0, -30.0 - 6 * 0.8, 12.5 - 8 * 0.8), abs=1e-5)
    _world_check(vol, on_disk)

    out_dir = tmp_path / "out"
    out = io.write(out_dir / f"scan{suffix}", vol.array, vol)
    back = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(back), scan_array), "voxel for voxel"
    assert back.GetPixelID() == original.GetPixelID()
    _assert_same_geometry(back, on_disk)

    labels = (vol.array > 200).astype(np.uint8) + (vol.array > 1000).astype(np.uint8)
    out_labels = io.write(out_dir / f"scan_labels{suffix}", labels, vol)
    back = sitk.ReadImage(str(out_labels))
    expected = (scan_array > 200).astype(np.uint8) + (scan_array > 1000).astype(np.uint8)
    assert np.array_equal(sitk.GetArrayFromImage(back), expected)
    _assert_same_geometry(back, on_disk)
    # and through io.read: the mask lines up with the scan
    again = io.read(out_labels)
    assert np.array_equal(again.array, labels)
    assert again.origin == pytest.approx(vol.origin, abs=1e-5)
    assert again.spacing == pytest.approx(vol.spacing, abs=1e-6)

    names = sorted(p.name for p in out_dir.iterdir())
    allowed = {
        f"scan{suffix}",
        f"scan_labels{suffix}",
        "scan.raw",
        "scan.zraw",
        "scan_labels.raw",
        "scan_labels.zraw",
    }
    assert set(names) <= allowed, names
    assert not any(n.startswith(".") or "attunet" in n or n.endswith(".tmp") for n in names)


DIRECTIONS = {
    "LPS": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "LPI (z mirrored)": (1, 0, 0, 0, 1, 0, 0, 0, -1),
    "axes permuted": (0, 1, 0, 0, 0, -1, -1, 0, 0),
    "oblique-ish permutation": (0, 0, 1, 1, 0, 0, 0, 1, 0),
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_any_axis_aligned_orientation_round_trips(tmp_path, scan_array, name):
    original = sitk_image(scan_array, (0.7, 1.1, 2.3), (-5.0, 8.0, 3.0), DIRECTIONS[name])
    src = tmp_path / "scan.nii.gz"
    sitk.WriteImage(original, str(src))
    on_disk = sitk.ReadImage(str(src))
    vol = io.read(src)
    assert sorted(vol.array.shape) == sorted(scan_array.shape)
    assert np.allclose(vol.direction, np.eye(3))
    _world_check(vol, on_disk)
    out = io.write(tmp_path / "out" / "labels.nii.gz", (vol.array > 0).astype(np.uint8), vol)
    back = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(back), (scan_array > 0).astype(np.uint8))
    _assert_same_geometry(back, on_disk)


def test_write_without_a_source_uses_spacing_and_origin(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = io.write(tmp_path / "plain.nrrd", array, spacing=(3.0, 2.0, 1.0), origin=(7.0, 8.0, 9.0))
    back = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(back), array)
    assert back.GetSpacing() == pytest.approx((1.0, 2.0, 3.0))
    assert back.GetOrigin() == pytest.approx((9.0, 8.0, 7.0))
    with pytest.raises(na.InputError):
        io.write(tmp_path / "plain.png", array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.nrrd"]


# ---- bad files -----------------------------------------------------------------------------


def _good_bytes(tmp_path, suffix, array) -> bytes:
    path = tmp_path / f"good{suffix}"
    sitk.WriteImage(sitk_image(array), str(path), suffix == ".nii.gz")
    return path.read_bytes()


BAD_FILES = {
    "missing": lambda d, a: d / "nowhere.nii.gz",
    "empty": lambda d, a: _put(d / "empty.nii.gz", b""),
    "garbage .nii.gz": lambda d, a: _put(d / "garbage.nii.gz", np.random.default_rng(2).bytes(4096)),
    "gzip of garbage .nii.gz": lambda d, a: _put(
        d / "gz.nii.gz", __import__("gzip").compress(np.random.default_rng(3).bytes(4096))
    ),
    "truncated .nii.gz": lambda d, a: _cut(d, ".nii.gz", a),
    "truncated .nii": lambda d, a: _cut(d, ".nii", a),
    "truncated .nrrd": lambda d, a: _cut(d, ".nrrd", a),
    "truncated .mha": lambda d, a: _cut(d, ".mha", a),
    "text in .nrrd": lambda d, a: _put(d / "text.nrrd", b"this is not a scan\n"),
    "4D .nii.gz": lambda d, a: _four_d(d),
    "folder without DICOM": lambda d, a: _folder(d / "nothing"),
}


def _put(path, data: bytes):
    path.write_bytes(data)
    return path


def _cut(folder, suffix, array):
    data = _good_bytes(folder, suffix, array)
    return _put(folder / f"cut{suffix}", data[: len(data) // 2])


def _four_d(folder):
    path = folder / "time.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16)), str(path))
    return path


def _folder(path):
    path.mkdir()
    (path / "readme.txt").write_text("no images here")
    return path


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_input_errors(tmp_path, scan_array, case):
    path = BAD_FILES[case](tmp_path, scan_array)
    with pytest.raises(na.InputError) as info:
        io.read(path)
    message = str(info.value)
    assert one_sentence(message), message
    assert path.name in message
