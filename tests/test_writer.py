"""napari contributions ``napari-attunet.write_labels`` and ``write_image`` (``plugin/writer.py``):
layers saved with their scan's geometry, and nothing lost on a full disk or a folder in the way.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import _fill, _no_staging, _run_on_scan, _tmpfs, snapshot

from napari_attunet import io

# Each test here runs with its own settings folder (never the user's recent checkpoints).
pytestmark = pytest.mark.usefixtures("_isolated_config")


def test_writer_round_trip_voxel_for_voxel(make_napari_viewer, qtbot, scan, checkpoint, tmp_path):
    viewer, widget = _run_on_scan(make_napari_viewer, qtbot, scan, checkpoint)
    labels = viewer.layers["patient attunet"]
    out = tmp_path / "mask.nii.gz"
    labels.save(str(out), plugin="napari-attunet")
    written = sitk.ReadImage(str(out))
    original = sitk.ReadImage(str(scan))
    assert written.GetSize() == original.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), original.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(written), labels.data)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".attunet-")]


def test_napari_save_on_a_full_disk_raises_and_keeps_the_old_file(tmp_path, make_napari_viewer):
    viewer = make_napari_viewer()
    labels = viewer.add_labels(
        np.random.default_rng(0).integers(0, 3, (40, 64, 64)).astype(np.uint8), name="edited"
    )
    with _tmpfs(tmp_path / "disk", "256k") as disk:
        target = disk / "mask.nii.gz"
        target.write_bytes(b"yesterday's save")
        _fill(disk, 16 << 10)
        before = snapshot(disk)
        with pytest.raises(OSError, match="disk is full") as info:
            labels.save(str(target), plugin="napari-attunet")
        assert str(target) in str(info.value) and "[Errno" not in str(info.value)
        assert snapshot(disk) == before
        _no_staging(disk)
        (disk / "filler.bin").unlink()  # room again: the save completes and reads back
        assert labels.save(str(target), plugin="napari-attunet") == [str(target)]
        assert np.array_equal(io.read(target).array, labels.data)


def test_napari_save_onto_a_folder_is_one_sentence(tmp_path, make_napari_viewer):
    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.zeros((4, 5, 6), np.uint8), name="mask")
    folder = tmp_path / "mask.nii.gz"
    folder.mkdir()
    (folder / "inside.txt").write_text("kept")
    before = snapshot(tmp_path)
    with pytest.raises(OSError, match="is a folder") as info:
        labels.save(str(folder), plugin="napari-attunet")
    assert "[Errno" not in str(info.value) and str(folder) in str(info.value)
    assert snapshot(tmp_path) == before
