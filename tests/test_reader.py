"""napari contribution ``napari-attunet.read`` (``plugin/reader.py``), in real viewers under Xvfb:
scans open with their geometry and upright planes, checkpoints dock the widget, bad files are one
notification.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import ORIGIN_XYZ, SPACING_XYZ, _check_message, _errors, _settle, _widget, snapshot
from qtpy.QtWidgets import QWidget

# Each test here runs with its own settings folder (never the user's recent checkpoints).
pytestmark = pytest.mark.usefixtures("_isolated_config")


# ---- scans -----------------------------------------------------------------------------------


def test_open_nifti_sets_scale_and_translate(make_napari_viewer, scan):
    viewer = make_napari_viewer()
    layers = viewer.open(str(scan), plugin="napari-attunet")
    layer = layers[0]
    assert layer.name == "patient"
    np.testing.assert_allclose(layer.scale, SPACING_XYZ[::-1], rtol=1e-6)
    np.testing.assert_allclose(layer.translate, ORIGIN_XYZ[::-1], rtol=1e-6)
    assert layer.data.shape == (24, 40, 48)
    assert "attunet_geometry" in layer.metadata


BRIGHT = 200  # grey level of the marker on screen (the background scan is dark)


@pytest.fixture
def marker_scan(tmp_path):
    """A dim LPS volume with a bright cube at its superior, anterior, left corner.

    Array axes (z, y, x) run along +S, +P, +L: the corner is high z, low y, high x. The three
    extents differ so that a transposed plane cannot pass for the right one.
    """
    array = np.full((20, 30, 40), 10, np.int16)
    array[-5:, :5, -5:] = 1000
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    path = tmp_path / "marker.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def _marker_on_screen(viewer) -> tuple[float, float]:
    """(row, column) of the marker's centre as fractions of the canvas: 0 is top / left."""
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float).mean(-1)
    rows, cols = np.nonzero(shot > BRIGHT)
    assert rows.size > 20, "the marker is not on screen"
    return rows.mean() / shot.shape[0], cols.mean() / shot.shape[1]


# (dims.order, what the plane shows): anterior/superior up, the patient's left on screen right,
# anterior on the left for sagittal. Transposed orders reach the same plane.
PLANES = [
    ((0, 1, 2), "axial"),
    ((0, 2, 1), "axial"),
    ((1, 0, 2), "coronal"),
    ((1, 2, 0), "coronal"),
    ((2, 0, 1), "sagittal"),
    ((2, 1, 0), "sagittal"),
]


def test_planes_read_like_a_clinical_viewer(make_napari_viewer, qtbot, marker_scan):
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(marker_scan), plugin="napari-attunet")
    assert tuple(viewer.dims.axis_labels) == ("superior", "posterior", "left")
    for order, plane in PLANES:
        viewer.dims.ndisplay = 2
        viewer.dims.order = order
        viewer.dims.current_step = (17, 2, 37)  # through the marker
        viewer.reset_view()
        _settle(qtbot)
        row, col = _marker_on_screen(viewer)
        if plane == "axial":  # anterior up, left on the right
            assert row < 0.5 and col > 0.5, (order, row, col)
        elif plane == "coronal":  # superior up, left on the right
            assert row < 0.5 and col > 0.5, (order, row, col)
        else:  # superior up, anterior on the left
            assert row < 0.5 and col < 0.5, (order, row, col)

    # 3D, un-mirrored: seen from the front (looking along +P, superior up), the patient's
    # left is on screen right; a mirrored rendering would put it on the left.
    viewer.dims.order = (0, 1, 2)
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.scene.camera.set_view_direction((0, 1, 0), (1, 0, 0))
    _settle(qtbot)
    row, col = _marker_on_screen(viewer)
    assert row < 0.5 and col > 0.5, (row, col)
    # and from behind (looking along -P) the left is on screen left
    viewer.scene.camera.set_view_direction((0, -1, 0), (1, 0, 0))
    _settle(qtbot)
    row, col = _marker_on_screen(viewer)
    assert row < 0.5 and col < 0.5, (row, col)


@pytest.mark.usefixtures("torch_single_thread")  # as every bad-input test
@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii", ".mha"])
def test_napari_nan_scan_opens_with_a_note(suffix, tmp_path, make_napari_viewer, notes):
    image = np.ones((6, 8, 8), np.float32)
    image[2, 3, 4] = np.nan
    image[4, 1, 1] = -np.inf
    path = tmp_path / f"with_nan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-attunet")
    assert [lay.name for lay in viewer.layers] == ["with_nan"]
    layer = viewer.layers["with_nan"]
    assert np.isfinite(layer.contrast_limits).all()
    # ITK reads a NIfTI's NaN/inf as 0; the reader keeps them, as in every other format
    assert np.isnan(layer.data).sum() == 1 and np.isneginf(layer.data).sum() == 1
    assert any("2 NaN or infinite" in str(n.message) for n in notes)


def test_a_label_map_opens_as_labels_over_its_scan(make_napari_viewer, notes):
    """The bundled grey/white-matter ground truth opens as a Labels layer (the reference a
    user picks), placed exactly over the T1 it was drawn on, with the results' palette."""
    from napari.layers import Image, Labels

    from napari_attunet.demo_data import DEMO_LABELS, DEMO_SCAN
    from napari_attunet.plugin.layers import LABEL_COLOURS
    from napari_attunet.scans import io

    viewer = make_napari_viewer()
    (t1,) = viewer.open(str(DEMO_SCAN), plugin="napari-attunet")
    (truth,) = viewer.open(str(DEMO_LABELS), plugin="napari-attunet")
    assert isinstance(t1, Image) and isinstance(truth, Labels)
    np.testing.assert_array_equal(truth.data, io.read(DEMO_LABELS).array)
    assert truth.data.shape == t1.data.shape
    np.testing.assert_allclose(truth.affine.affine_matrix, t1.affine.affine_matrix, atol=1e-9)
    np.testing.assert_allclose(truth.scale, t1.scale)
    np.testing.assert_allclose(truth.translate, t1.translate)
    assert "attunet_geometry" in truth.metadata
    # each class where nibabel puts it: its centroid in world mm (napari: S, P, L; nibabel: RAS)
    import nibabel as nib

    image = nib.load(str(DEMO_LABELS))
    voxels = np.asarray(image.dataobj)
    for value in (1, 2):
        ras = image.affine @ np.append(np.argwhere(voxels == value).mean(0), 1.0)
        spl = truth.data_to_world(np.argwhere(np.asarray(truth.data) == value).mean(0))
        np.testing.assert_allclose(spl, [ras[2], -ras[1], -ras[0]], atol=1e-3)
    np.testing.assert_allclose(truth.colormap.map(np.array([1]))[0], LABEL_COLOURS[1], atol=1e-6)
    said = [str(n.message) for n in notes]
    assert any("opened as a label map" in m and "Convert to Image" in m for m in said), said


def test_float_label_map_becomes_whole_labels_and_scans_stay_images(tmp_path, make_napari_viewer):
    """MONAI's SaveImage writes labels as float32: they open as integer Labels. A scan with
    few values whose background is not 0 (a phantom), and a CT, stay images."""
    import nibabel as nib
    from napari.layers import Image, Labels

    affine = np.diag([1.5, -1.0, 2.0, 1.0])
    labels = np.zeros((20, 24, 16), np.float32)
    labels[4:10, 5:12, 3:8] = 1
    labels[12:16, 5:12, 3:8] = 3
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "seg.nii.gz")
    phantom = np.full((20, 24, 16), 10, np.int16)
    phantom[4:10] = 1000
    nib.save(nib.Nifti1Image(phantom, affine), tmp_path / "phantom.nii.gz")
    ct = np.full((20, 24, 16), -1000, np.int16)
    ct[4:16, 4:20, 2:14] = np.random.default_rng(0).integers(-100, 100, (12, 16, 12))
    nib.save(nib.Nifti1Image(ct, affine), tmp_path / "ct.nii.gz")

    viewer = make_napari_viewer()
    (seg,) = viewer.open(str(tmp_path / "seg.nii.gz"), plugin="napari-attunet")
    assert isinstance(seg, Labels) and seg.data.dtype == np.uint8
    assert sorted(np.unique(seg.data)) == [0, 1, 3]
    assert int((seg.data == 3).sum()) == int((labels == 3).sum())
    for name in ("phantom", "ct"):
        (layer,) = viewer.open(str(tmp_path / f"{name}.nii.gz"), plugin="napari-attunet")
        assert isinstance(layer, Image), name


# ---- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_reader_docks_widget(make_napari_viewer, checkpoint, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(checkpoint), plugin="napari-attunet")
    assert len(viewer.layers) == 0
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    assert widget.model is not None
    assert "official, 3D, 3 classes" in widget.model_info.value


def test_bad_checkpoint_is_a_notification(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    widget = _widget(viewer)
    assert widget.load_checkpoint(bad) is False
    assert widget.model is None


# ---- bad files (helpers.bad_files) ----------------------------------------------------------


NAPARI_SCANS = [
    "complex_nii",
    "complex_hdr_nii",
    "nhdr",
    "mhd",
    "gz_bomb",
    "huge_nrrd",
    "huge_nii",
    "truncated_nii",
    "noise_nii",
    "4d",
    "truncated_mha",
]


@pytest.mark.usefixtures("torch_single_thread")  # as every bad-input test
@pytest.mark.parametrize("key", NAPARI_SCANS)
def test_napari_open_bad_scan(key, files, make_napari_viewer, notes):
    viewer = make_napari_viewer()
    before = snapshot(files["root"])
    viewer.open(str(files[key]), plugin="napari-attunet")
    assert len(viewer.layers) == 0
    messages = _errors(notes)
    assert len(messages) == 1, messages
    _check_message(messages[0], str(files[key]))
    assert snapshot(files["root"]) == before


NAPARI_CKPTS = [
    "nan_pt",
    "complex_pt",
    "meta_pt",
    "sparse_pt",
    "zip_bomb",
    "st_bomb",
    "spec_strides",
    "spec_bomb",
]


@pytest.mark.usefixtures("torch_single_thread")  # as every bad-input test
@pytest.mark.parametrize("key", NAPARI_CKPTS)
def test_napari_bad_checkpoint(key, files, make_napari_viewer, notes):
    viewer = make_napari_viewer()
    before = snapshot(files["root"])
    viewer.open(str(files[key]), plugin="napari-attunet")  # docks the widget, loads the file
    widget = _widget(viewer)
    assert widget.model is None
    messages = _errors(notes)
    assert len(messages) == 1, messages
    _check_message(messages[0], str(files[key]))
    assert snapshot(files["root"]) == before


# ---- files it does not open -----------------------------------------------------------------


def _drop(viewer, path) -> None:
    """What napari does with a file dropped on its window (``QtViewer.dropEvent``)."""
    from qtpy.QtCore import QUrl

    viewer.window._qt_viewer._open_from_list_of_urls_data(
        [QUrl.fromLocalFile(str(path))], stack=False, choose_plugin=False
    )


@pytest.mark.parametrize("name", ["notes.txt", "Report.PDF", "series.zip", "brain.mgz"])
def test_dropped_unsupported_file_is_one_sentence_naming_the_formats(
    name, tmp_path, make_napari_viewer, notes
):
    path = tmp_path / name
    path.write_bytes(b"not a scan")
    viewer = make_napari_viewer()
    _drop(viewer, path)
    assert len(viewer.layers) == 0
    (message,) = _errors(notes)
    _check_message(message, str(path))
    for named in (".nii.gz", ".nrrd", ".mha", "DICOM", ".zarr", ".safetensors", ".pt"):
        assert named in message, (named, message)
    if name.endswith(".zip"):
        assert "Unpack it" in message
    notes.clear()
    viewer.open(str(path), plugin=None)  # as a script would: the same sentence, no exception
    assert _errors(notes) == [message]


def test_reader_claims_no_file_napari_opens(tmp_path, make_napari_viewer):
    import yaml
    from napari.plugins import _npe2

    from napari_attunet.plugin.reader import MISTAKEN_SUFFIXES, get_reader, read_scan

    manifest = pathlib.Path(__file__).parents[1] / "napari_attunet" / "napari.yaml"
    (reader,) = yaml.safe_load(manifest.read_text())["contributions"]["readers"]
    assert {f"*{s}" for s in MISTAKEN_SUFFIXES} <= set(reader["filename_patterns"])
    for suffix in MISTAKEN_SUFFIXES:  # ours alone: no reader dialog for them
        assert list(_npe2.get_readers(f"file{suffix}")) == ["napari-attunet"], suffix
    for suffix in (".tif", ".png", ".npy", ".csv", ".h5"):
        assert "napari-attunet" not in _npe2.get_readers(f"file{suffix}"), suffix
    viewer = make_napari_viewer()
    np.save(tmp_path / "array.npy", np.zeros((4, 5)))
    _drop(viewer, tmp_path / "array.npy")
    assert [layer.name for layer in viewer.layers] == ["array"]
    # a folder is never refused for its name: a DICOM series in "export.json/" opens
    folder = tmp_path / "export.json"
    folder.mkdir()
    (folder / "slice1.dcm").write_bytes(b"")
    assert get_reader(str(folder)) is read_scan


def test_slider_labels_show_whole_in_every_canvas(make_napari_viewer, qtbot, marker_scan):
    """napari caps an axis label at a fifth of its first slider's width, which is 100 px in a
    canvas that opened on another plane: the linked coronal view showed "p..." for posterior."""
    from napari_attunet.plugin import orthoviews

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open(str(marker_scan), plugin="napari-attunet")
    orthoviews.show(viewer)
    _settle(qtbot, 300)
    for order in ((1, 0, 2), (2, 0, 1), (0, 1, 2)):  # and the main canvas in every plane
        viewer.dims.order = order
        _settle(qtbot, 100)
    seen = {}
    for panel in viewer.window._qt_window.findChildren(QWidget):
        for slider in getattr(panel, "slider_widgets", []):
            label = slider.axis_label
            if slider.isVisible():
                seen[label.text()] = label.width() - label.fontMetrics().horizontalAdvance(label.text())
    assert set(seen) == {"superior", "posterior", "left"}, seen
    assert all(room >= 10 for room in seen.values()), seen  # the whole word and a margin
    orthoviews.show(viewer, on=False)
