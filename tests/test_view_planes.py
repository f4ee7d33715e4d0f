"""What a radiologist sees on opening a scan (``plugin/windows.py``, ``orientation.py``,
``orthoviews.py``): windows by modality on real files, CT presets, orientation letters and the
scale bar on every plane, linked orthogonal views, and the sentence for an unsupported file.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import _check_message, _settle, _widget

import napari_attunet as na
from napari_attunet.demo_data import DEMO_SCAN
from napari_attunet.errors import InputError
from napari_attunet.plugin import orthoviews
from napari_attunet.plugin.orientation import camera_of, edge_letters, show_letters
from napari_attunet.plugin.windows import CT_WINDOWS, looks_like_ct, percentile_window

pytestmark = pytest.mark.usefixtures("_isolated_config")


def _anatomical() -> pathlib.Path:
    import nibabel.testing

    return pathlib.Path(nibabel.testing.data_path) / "anatomical.nii"


def _pydicom_file(name: str) -> pathlib.Path:
    from pydicom.data import get_testdata_file

    return pathlib.Path(get_testdata_file(name))


# ---- windows by modality ------------------------------------------------------------------------


def test_windows_by_modality_on_real_files(make_napari_viewer):
    viewer = make_napari_viewer()
    # nibabel's MR spans -610..30393: a min/max rule took it for CT (a white rectangle)
    (mr,) = viewer.open(str(_anatomical()), plugin="napari-attunet")
    assert mr.metadata["attunet_window"]["modality"] == "unknown"
    expected = np.percentile(mr.data[np.isfinite(mr.data)], (0.5, 99.5))
    np.testing.assert_allclose(mr.contrast_limits, expected, rtol=1e-6)
    assert mr.contrast_limits[0] > 500  # the brain's grey levels, not a CT window
    lo, hi = mr.contrast_limits_range  # the slider still reaches every value
    assert lo <= -610 and hi >= 30393
    # pydicom's CT slice: its Modality says CT (its darkest voxels are -896 HU, no air)
    (ct,) = viewer.open(str(_pydicom_file("CT_small.dcm")), plugin="napari-attunet")
    assert ct.metadata["attunet_window"] == {**ct.metadata["attunet_window"], "modality": "CT"}
    assert tuple(ct.contrast_limits) == CT_WINDOWS["soft tissue"]
    assert ct.contrast_limits_range[0] <= -896 and ct.contrast_limits_range[1] >= 1167
    # and its MR slice: percentiles
    (mr_dicom,) = viewer.open(str(_pydicom_file("MR_small.dcm")), plugin="napari-attunet")
    assert mr_dicom.metadata["attunet_window"]["modality"] == "MR"
    np.testing.assert_allclose(mr_dicom.contrast_limits, percentile_window(mr_dicom.data))
    # the MNI template (T1, 0..252, mostly background)
    (t1,) = viewer.open(str(DEMO_SCAN), plugin="napari-attunet")
    assert t1.metadata["attunet_window"]["modality"] == "unknown"
    np.testing.assert_allclose(t1.contrast_limits, np.percentile(t1.data, (0.5, 99.5)))
    assert t1.contrast_limits[1] > 150


def _ct_phantom(padding: int | None = None) -> np.ndarray:
    """An axial CT-like volume: air at -1000 HU around a water body (0 HU) with bone (1000 HU),
    optionally padded outside a circular field of view."""
    z, y, x = np.mgrid[0:8, 0:64, 0:64]
    r = np.hypot(y - 32, x - 32)
    volume = np.full(r.shape, -1000, np.int16)
    volume[r < 22] = 0
    volume[r < 6] = 1000
    volume += np.random.default_rng(0).integers(-20, 21, volume.shape).astype(np.int16)
    if padding is not None:
        volume[r > 31] = padding
    return volume


@pytest.mark.parametrize("padding", [None, -1024, -2048, -3024])
def test_ct_is_recognised_by_content(padding, tmp_path, make_napari_viewer):
    array = _ct_phantom(padding)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-attunet")
    assert layer.metadata["attunet_window"]["modality"] == "CT"
    assert tuple(layer.contrast_limits) == CT_WINDOWS["soft tissue"]


def test_not_ct_by_content():
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(_anatomical())))
    assert mr.min() <= -500 and mr.max() >= 300  # what the min/max rule took for CT
    assert not looks_like_ct(mr)
    assert not looks_like_ct(_ct_phantom() * 10)  # values far off the CT scale
    assert not looks_like_ct(_ct_phantom() + 1000)  # no air: CT numbers without the offset
    with_metal = _ct_phantom()
    with_metal[0, 32, 32] = 15000  # one voxel of metal is still CT
    assert looks_like_ct(with_metal)


def test_ct_presets_one_click_away(make_napari_viewer):
    viewer = make_napari_viewer()
    (ct,) = viewer.open(str(_pydicom_file("CT_small.dcm")), plugin="napari-attunet")
    widget = _widget(viewer)
    controls = widget.view_controls
    widget.image.value = ct
    assert controls.window.value == "soft tissue"
    for name, limits in CT_WINDOWS.items():
        controls.window.value = name
        assert tuple(ct.contrast_limits) == limits, name
        lo, hi = ct.contrast_limits_range
        assert lo <= limits[0] and hi >= limits[1]
    controls.window.value = "percentile"
    np.testing.assert_allclose(ct.contrast_limits, percentile_window(ct.data))
    assert ct.metadata["attunet_window"]["window"].startswith("percentile")


# ---- orientation letters and scale bar ------------------------------------------------------------

# Grey levels of the markers on screen (window 0..1000 on a dark background).
RIGHT, ANTERIOR, SUPERIOR = 1000, 600, 300
SHADES = {RIGHT: (230, 256), ANTERIOR: (130, 175), SUPERIOR: (60, 95)}


@pytest.fixture
def sided_scan(tmp_path):
    """A dim LPS volume (z, y, x along +S, +P, +L) with markers burned into the patient's
    right (low x), anterior (low y) and superior (high z) sides, each a slab through the
    centre of the other two axes, so that each plane through the centre shows two of them."""
    array = np.full((20, 30, 40), 10, np.int16)
    array[7:13, 12:18, 0:4] = RIGHT
    array[7:13, 0:4, 17:23] = ANTERIOR
    array[16:20, 12:18, 17:23] = SUPERIOR
    path = tmp_path / "sided.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _marker_pixels(shot: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the largest patch of a marker's grey (letters and the scale bar
    are small patches of white and antialiased grey)."""
    from scipy import ndimage

    lo, hi = SHADES[level]
    grey = shot[..., :3].astype(float)
    mask = (grey.max(-1) - grey.min(-1) < 8) & (grey.mean(-1) >= lo) & (grey.mean(-1) < hi)
    patches, n = ndimage.label(mask)
    if n == 0:
        return np.array([], int), np.array([], int)
    sizes = np.bincount(patches.reshape(-1))[1:]
    largest = int(np.argmax(sizes)) + 1
    if sizes[largest - 1] < 500:
        return np.array([], int), np.array([], int)
    return np.nonzero(patches == largest)


def _blob(shot: np.ndarray, level: int) -> tuple[float, float] | None:
    """(row, column) of a marker's centre as fractions of the picture, or None."""
    rows, cols = _marker_pixels(shot, level)
    if rows.size == 0:
        return None
    return rows.mean() / shot.shape[0], cols.mean() / shot.shape[1]


def _sides(shot: np.ndarray) -> dict[str, str]:
    """Which edge each visible marker lies towards: {"R": "left", "A": "top", ...}."""
    out = {}
    for letter, level, horizontal in (("R", RIGHT, True), ("A", ANTERIOR, None), ("S", SUPERIOR, False)):
        centre = _blob(shot, level)
        if centre is None:
            continue
        row, col = centre
        # the anterior marker is at the vertical centre of a sagittal plane, never an edge
        along_rows = abs(row - 0.5) > abs(col - 0.5) if horizontal is None else not horizontal
        out[letter] = ("top" if row < 0.5 else "bottom") if along_rows else ("left" if col < 0.5 else "right")
    return out


OPPOSITE = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}
FACING = {"R": "L", "A": "P", "S": "I"}
ORDERS = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]


def _check_letters(viewer, qtbot, expected_markers: int = 2) -> dict[str, str]:
    viewer.reset_view()
    _settle(qtbot)
    letters = show_letters(viewer)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    sides = _sides(shot)
    assert len(sides) == expected_markers, (viewer.dims.order, sides)
    for marker, edge in sides.items():
        assert letters[edge] == marker, (viewer.dims.order, marker, edge, letters)
        assert letters[OPPOSITE[edge]] == FACING[marker], (viewer.dims.order, letters)
    return letters


def _dicom_letter(direction) -> tuple[str, str]:
    """(towards +, towards -) of a patient direction by its largest LPS component, written out
    from DICOM's definition rather than from the plugin's tables."""
    c = int(np.argmax(np.abs(direction)))
    pair = [("L", "R"), ("P", "A"), ("S", "I")][c]
    return pair if direction[c] > 0 else pair[::-1]


@pytest.mark.parametrize("orientation", [None, (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1)])
def test_a_single_dicom_slice_gets_its_letters_and_a_scale_bar(make_napari_viewer, tmp_path, orientation):
    """pydicom's CT_small (axial), and copies turned sagittal and coronal: the edges name the
    sides that Image Orientation (Patient), read by pydicom, gives (its first triplet is the
    direction of increasing column, to the right; the second of increasing row, downwards)."""
    import pydicom

    from napari_attunet.plugin.orientation import _canvas_overlays

    ds = pydicom.dcmread(_pydicom_file("CT_small.dcm"))
    if orientation is not None:
        ds.ImageOrientationPatient = list(orientation)
    path = tmp_path / "slice.dcm"
    ds.save_as(path)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    right, left = _dicom_letter(iop[:3])
    bottom, top = _dicom_letter(iop[3:])

    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-attunet")
    assert layer.ndim == 2
    assert show_letters(viewer) == {"top": top, "bottom": bottom, "left": left, "right": right}
    assert _canvas_overlays(viewer)["scale_bar"].visible
    if orientation is None:
        assert (top, left) == ("A", "R")  # the radiological axial view


def test_letters_on_every_plane(make_napari_viewer, qtbot, sided_scan):
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(sided_scan), plugin="napari-attunet")
    layer.contrast_limits = (0, 1000)
    seen = {}
    for order in ORDERS:
        viewer.dims.ndisplay = 2
        viewer.dims.order = order
        viewer.dims.current_step = (10, 15, 20)
        seen[order] = _check_letters(viewer, qtbot)
        overlays = viewer.canvas.overlays
        assert [overlays[f"attunet_orientation_{e}"].text for e in ("top", "bottom", "left", "right")] == [
            seen[order][e] for e in ("top", "bottom", "left", "right")
        ]
    assert seen[(0, 1, 2)] == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert seen[(1, 0, 2)] == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    assert seen[(2, 0, 1)] == {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    # a flip by the user (camera orientation) moves the markers and the letters with them
    viewer.dims.order = (0, 1, 2)
    camera_of(viewer).orientation2d = ("down", "left")
    letters = _check_letters(viewer, qtbot)
    assert letters["right"] == "R"
    # the letters are drawn: the canvas differs where they stand when they are hidden
    camera_of(viewer).orientation2d = ("down", "right")
    _settle(qtbot)
    with_letters = viewer.screenshot(canvas_only=True, flash=False)
    for edge in ("top", "bottom", "left", "right"):
        viewer.canvas.overlays[f"attunet_orientation_{edge}"].visible = False
    _settle(qtbot)
    without = viewer.screenshot(canvas_only=True, flash=False)
    changed = np.nonzero(np.abs(with_letters.astype(int) - without.astype(int)).sum(-1) > 60)
    assert changed[0].size > 40
    # in 3D no plane: no letters
    viewer.dims.ndisplay = 3
    assert show_letters(viewer) == {}
    assert not any(viewer.canvas.overlays[f"attunet_orientation_{e}"].visible for e in ("top", "left"))


def test_scale_bar_in_mm(make_napari_viewer, sided_scan):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(sided_scan), plugin="napari-attunet")
    assert viewer.canvas.overlays["scale_bar"].visible
    assert {str(u) for u in layer.units} == {"millimeter"}


def _edges(top: str, bottom: str, left: str, right: str) -> dict[str, str]:
    return {"top": top, "bottom": bottom, "left": left, "right": right}


def test_edge_letters_follow_the_camera():
    assert edge_letters((0, 1, 2), ("down", "right"), 0) == _edges("A", "P", "R", "L")
    assert edge_letters((0, 1, 2), ("up", "left"), 0) == _edges("P", "A", "L", "R")
    # a time axis in front: the scan axes are the last three
    assert edge_letters((0, 3, 1, 2), ("up", "right"), 1) == _edges("S", "I", "A", "P")
    assert edge_letters((3, 2, 1, 0), ("up", "right"), 1) == {"top": "S", "bottom": "I"}  # axis 0: time


# ---- linked orthogonal views --------------------------------------------------------------------


def _crosshair(shot: np.ndarray) -> tuple[int, int]:
    """(row, column) of the crosshair's lines: the rows and columns mostly yellow."""
    rgb = shot[..., :3].astype(int)
    yellow = (rgb[..., 0] - rgb[..., 2] > 40) & (rgb[..., 1] - rgb[..., 2] > 40)
    rows = np.nonzero(yellow.mean(1) > 0.5)[0]
    cols = np.nonzero(yellow.mean(0) > 0.5)[0]
    assert rows.size and cols.size, "no crosshair on screen"
    return int(np.median(rows)), int(np.median(cols))


def _marker_box(shot: np.ndarray, level: int) -> tuple[int, int, int, int]:
    rows, cols = _marker_pixels(shot, level)
    assert rows.size, "the marker is not on screen"
    return rows.min(), rows.max(), cols.min(), cols.max()


def _shots(views, canvases, plane: str) -> tuple[np.ndarray, np.ndarray]:
    """The plane's canvas without its crosshair (whose lines cut a marker in four), and with."""
    lines = views.crosshairs[plane].lines
    for line in lines:
        line.visible = False
    without = canvases[plane].screenshot(flash=False)
    for line in lines:
        line.visible = True
    return without, canvases[plane].screenshot(flash=False)


def _crosshair_on_marker(views, canvases, plane: str, level: int) -> None:
    without, with_lines = _shots(views, canvases, plane)
    r0, r1, c0, c1 = _marker_box(without, level)
    row, col = _crosshair(with_lines)
    assert r0 <= row <= r1 and c0 <= col <= c1, (plane, row, col, (r0, r1, c0, c1))


def _click(canvas, row: float, col: float) -> None:
    scene = canvas._scene_canvas
    scene.events.mouse_press(pos=(col, row), button=1, modifiers=())
    scene.events.mouse_release(pos=(col, row), button=1, modifiers=())


def test_click_at_a_marker_lands_on_it_in_all_three(make_napari_viewer, qtbot, sided_scan):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    (layer,) = viewer.open(str(sided_scan), plugin="napari-attunet")
    layer.contrast_limits = (0, 1000)
    _widget(viewer).view_controls.three_planes.value = True
    views = orthoviews.show(viewer)
    assert views is not None
    canvases = {"axial": viewer.window._qt_viewer, **views.qt_viewers}
    _settle(qtbot, 400)
    views.reset_views()
    _settle(qtbot)
    for plane, model in zip(("axial", "coronal", "sagittal"), views.all_models, strict=True):
        assert tuple(model.dims.order) == orthoviews.PLANES[plane]
        assert [lay.name for lay in model.layers] == ["sided"]
    # each plane upright, with its letters
    assert show_letters(viewer) == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert show_letters(views.models["coronal"])["top"] == "S"
    assert show_letters(views.models["sagittal"]) == {"top": "S", "bottom": "I", "left": "A", "right": "P"}

    # Click the superior marker in the sagittal view (at the centre of its box on screen):
    # the crosshair lands on it there, and the other planes move through it.
    r0, r1, c0, c1 = _marker_box(_shots(views, canvases, "sagittal")[0], SUPERIOR)
    _click(canvases["sagittal"].canvas, (r0 + r1) / 2, (c0 + c1) / 2)
    _settle(qtbot)
    point = np.asarray(views.point)
    assert 16 <= point[0] < 20 and 12 <= point[1] < 18, point  # in the marker (S and P)
    for model in views.all_models:
        np.testing.assert_allclose(model.dims.point, point)
    # in the coronal plane (through that P) the marker lies under the crosshair too
    for plane in ("sagittal", "coronal"):
        _crosshair_on_marker(views, canvases, plane, SUPERIOR)

    # Click the right marker in the coronal view: the axial plane goes to its level (S)
    # and the sagittal plane to the patient's right edge, through it
    r0, r1, c0, c1 = _marker_box(_shots(views, canvases, "coronal")[0], RIGHT)
    _click(canvases["coronal"].canvas, (r0 + r1) / 2, (c0 + c1) / 2)
    _settle(qtbot)
    point = np.asarray(views.point)
    assert 7 <= point[0] < 13 and 0 <= point[2] < 4, point
    for plane in ("axial", "coronal", "sagittal"):
        _crosshair_on_marker(views, canvases, plane, RIGHT)

    # a drag pans, it does not move the crosshair
    scene = canvases["axial"].canvas._scene_canvas
    scene.events.mouse_press(pos=(100, 100), button=1, modifiers=())
    scene.events.mouse_move(pos=(140, 120), button=1, modifiers=(), press_event=None)
    scene.events.mouse_release(pos=(140, 120), button=1, modifiers=())
    np.testing.assert_allclose(views.point, point)

    _widget(viewer).view_controls.three_planes.value = False
    assert orthoviews.show(viewer, on=False) is None
    assert viewer.mouse_drag_callbacks == [cb for cb in viewer.mouse_drag_callbacks if cb is not views._click]


def test_every_layer_in_every_view(make_napari_viewer, qtbot, sided_scan):
    viewer = make_napari_viewer(show=True)
    views = orthoviews.show(viewer)  # on before any scan is open
    assert views is not None
    (scan,) = viewer.open(str(sided_scan), plugin="napari-attunet")
    for plane, model in zip(("axial", "coronal", "sagittal"), views.all_models, strict=True):
        assert tuple(model.dims.order) == orthoviews.PLANES[plane]
    labels = viewer.add_labels(np.zeros(scan.data.shape, np.uint8), name="labels", **_geometry(scan))
    gate = viewer.add_image(
        np.random.default_rng(0).random((5, 8, 10)), name="gate", scale=(4, 4, 4), units=scan.units
    )
    uncertainty = viewer.add_image(
        np.zeros(scan.data.shape, np.float32), name="uncertainty", units=scan.units
    )
    for model in views.models.values():
        assert [lay.name for lay in model.layers] == ["sided", "labels", "gate", "uncertainty"]
        assert model.layers["labels"].data is labels.data  # shared, not copied
        np.testing.assert_allclose(model.layers["gate"].scale, gate.scale)
    # restyled, painted and removed in the main viewer: the same in the others
    gate.opacity = 0.3
    gate.colormap = "magma"
    labels.contour = 1
    labels.paint((15, 3, 20), 2, refresh=True)
    viewer.layers.move(3, 1)
    for model in views.models.values():
        assert [lay.name for lay in model.layers] == ["sided", "uncertainty", "labels", "gate"]
    viewer.layers.remove(uncertainty)
    for model in views.models.values():
        assert [lay.name for lay in model.layers] == ["sided", "labels", "gate"]
        assert model.layers["gate"].opacity == pytest.approx(0.3)
        assert model.layers["gate"].colormap.name == "magma"
        assert model.layers["labels"].contour == 1
        assert model.layers["labels"].data[15, 3, 20] == 2
    orthoviews.show(viewer, on=False)


def _geometry(layer) -> dict:
    return {
        "scale": layer.scale,
        "translate": layer.translate,
        "units": layer.units,
        "metadata": dict(layer.metadata),
    }


# ---- an unsupported file ----------------------------------------------------------------------------


def test_unsupported_file_lists_the_formats(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a scan\n")
    with pytest.raises(InputError) as info:
        na.io.read(path)
    message = str(info.value)
    _check_message(message, str(path))
    assert "not in a supported format" in message
    for name in ("NIfTI", ".nii.gz", "NRRD", "MetaImage", ".mha", "DICOM"):
        assert name in message
    assert "ImageIO" not in message


def test_gate_layers_of_a_run_in_every_view(make_napari_viewer, qtbot, sided_scan):
    """A result's gate maps are layers of their own class (their extent ends at the scan's):
    the three planes copy them as they are, and the sliders of every view stay the scan's."""
    from napari_attunet.plugin.layers import SourceGeometry, gate_image, gate_kwargs

    viewer = make_napari_viewer(show=True)
    (scan,) = viewer.open(str(sided_scan), plugin="napari-attunet")
    source = SourceGeometry.from_layer(scan, scan.ndim)
    cells = tuple(-(-n // 4) for n in scan.data.shape)  # a grid pooled by 4 reaches past the scan
    kwargs = gate_kwargs(source, 1, 0, 1, (4, 4, 4), (1.5, 1.5, 1.5), (0.0, 1.0), 2, scan.data.shape)
    gate = viewer.add_layer(gate_image(np.random.default_rng(0).random(cells), kwargs))
    steps = tuple(viewer.dims.nsteps)
    views = orthoviews.show(viewer)
    assert views is not None
    for model in views.models.values():
        copy = model.layers[gate.name]
        assert type(copy) is type(gate) and copy.data is gate.data
        np.testing.assert_allclose(copy.scale, gate.scale)
        np.testing.assert_allclose(copy.translate, gate.translate)
        assert tuple(model.dims.nsteps) == steps
    orthoviews.show(viewer, False)


def test_outlined_labels_stay_outlined_in_every_view(make_napari_viewer, qtbot, sided_scan):
    """Labels drawn as outlines (while a map is shown) are outlines in the coronal and sagittal
    views too, from the moment the views open: napari's layer state leaves ``contour`` out."""
    viewer = make_napari_viewer(show=True)
    (scan,) = viewer.open(str(sided_scan), plugin="napari-attunet")
    labels = viewer.add_labels(np.ones(scan.data.shape, np.uint8), name="labels", **_geometry(scan))
    labels.contour = 1
    views = orthoviews.show(viewer)
    assert views is not None
    assert [model.layers["labels"].contour for model in views.models.values()] == [1, 1]
    labels.contour = 0
    assert [model.layers["labels"].contour for model in views.models.values()] == [0, 0]
    orthoviews.show(viewer, False)
