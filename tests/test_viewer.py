"""The viewer reads like a clinical workstation: upright planes, overlays that keep the label
colours, the uncertainty layer and the readout at the cursor, in real viewers under Xvfb."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

import napari_attunet as na
from napari_attunet.demo_data import DEMO_CHECKPOINT, DEMO_SCAN
from napari_attunet.plugin.layers import LABEL_COLOURS

BRIGHT = 200  # grey level of the marker on screen (the background scan is dark)


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ATTUNET_CONFIG", str(tmp_path / "config"))


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


def _settle(qtbot, ms=150):
    qtbot.wait(ms)


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


def _run_demo(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    (scan,) = viewer.open(str(DEMO_SCAN), plugin="napari-attunet")
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    assert widget.load_checkpoint(DEMO_CHECKPOINT)
    widget.image.value = scan
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert widget.status.value.startswith("done"), widget.status.value
    return viewer, widget, scan


def _canvas(viewer, qtbot) -> np.ndarray:
    _settle(qtbot)
    return viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)


def test_demo_overlays_uncertainty_and_readout(make_napari_viewer, qtbot):
    viewer, widget, scan = _run_demo(make_napari_viewer, qtbot)
    name = scan.name
    labels = viewer.layers[f"{name} attunet"]
    gate = viewer.layers[f"{name} gate 1"]
    pred = widget.state.prediction

    # After a run the labels are selected, and the dropdown names the loaded checkpoint.
    assert viewer.layers.selection.active is labels or viewer.layers.selection.active.name == labels.name
    assert widget.recent.value == str(DEMO_CHECKPOINT)

    # The default labels follow the one rule (argmax for this softmax model), as the CLI's do.
    assert np.array_equal(labels.data, pred.labels())
    assert np.array_equal(labels.data, pred.quantized.argmax(0))

    # ---- overlay: where attention is low, the label colours stay those of the legend --------
    viewer.dims.order = (0, 1, 2)
    viewer.dims.current_step = (50, 58, 49)
    viewer.reset_view()
    layers = list(viewer.layers)
    visible = [layer.visible for layer in layers]
    shown = _canvas(viewer, qtbot)  # scan + labels + gate, as the user sees
    gate.visible = False
    clean = _canvas(viewer, qtbot)  # scan + labels
    for layer in layers:
        layer.visible = layer is gate
    attention = _canvas(viewer, qtbot).max(-1)  # the gate alone, on black
    for layer in layers:
        layer.visible = layer is labels
    opacity = labels.opacity
    labels.opacity = 1.0
    classes = _canvas(viewer, qtbot)  # the labels alone, opaque
    labels.opacity = opacity
    for layer, was in zip(layers, visible):
        layer.visible = was
    legend = np.array([LABEL_COLOURS[k][:3] for k in (1, 2)]) * 255
    low = attention < 8
    for k in (1, 2):
        region = low & (np.abs(classes - legend[k - 1]).max(-1) < 3)
        assert region.sum() > 2000, f"class {k} barely on screen"
        # the gate leaves these pixels as labels-on-scan draws them ...
        assert np.abs(shown[region] - clean[region]).mean() < 3
        # ... and each looks like its own legend swatch more than like the other class's
        own = np.linalg.norm(shown[region] - legend[k - 1], axis=-1)
        other = np.linalg.norm(shown[region] - legend[2 - k], axis=-1)
        assert (own < other).mean() > 0.95
        assert np.median(own) < 90
    # where attention is high, the gate is seen
    hot = attention > 100
    assert hot.sum() > 50 and np.abs(shown[hot] - clean[hot]).mean() > 20

    # ---- uncertainty: in [0, 1], high on class boundaries, low inside large regions --------
    u = pred.uncertainty
    assert u.shape == pred.shape and u.dtype == np.float32
    assert 0.0 <= u.min() and u.max() <= 1.0
    lab = pred.labels()
    inner = np.zeros_like(lab, bool)
    edges = np.zeros_like(lab, bool)
    for k in (0, 1, 2):
        mask = lab == k
        inner |= ndimage.binary_erosion(mask, iterations=3)
        edges |= mask & ~ndimage.binary_erosion(mask)
    boundary = edges & (ndimage.maximum_filter(lab, 3) != ndimage.minimum_filter(lab, 3))
    assert u[inner].mean() < 0.02
    assert u[boundary].mean() > 5 * u[inner].mean() + 0.05
    assert np.percentile(u[boundary], 90) > 0.3

    # the layer, the toggle and the uncertain column following the level
    assert f"{name} uncertainty" not in viewer.layers
    widget.show_uncertainty.value = True
    layer = viewer.layers[f"{name} uncertainty"]
    assert layer.visible and np.array_equal(layer.data, u)
    np.testing.assert_allclose(layer.scale, scan.scale)
    np.testing.assert_allclose(layer.translate, scan.translate)
    widget.show_uncertainty.value = False
    assert not layer.visible
    table = {}
    for level in (0.6, 0.2):
        widget.uncertainty_level.value = level
        data = widget.volumes.value
        column = data["columns"].index("uncertain mL")
        table[level] = [row[column] for row in data["data"]]
        expected = pred.uncertain_volumes_ml(labels.data, level, scan.scale)
        voxel = float(np.prod(scan.scale)) / 1000
        for row, cname in zip(data["data"], ("grey matter", "white matter")):
            assert row[column] == pytest.approx(expected[cname], abs=1e-3)
            assert expected[cname] == pytest.approx(
                ((labels.data == pred.label_names.index(cname)) & (u > level)).sum() * voxel
            )
    assert all(a < b for a, b in zip(table[0.6], table[0.2]))
    assert layer.iso_threshold == pytest.approx(0.2)

    # ---- readout at the cursor ----------------------------------------------------------
    boundary_voxel = tuple(int(i) for i in np.argwhere(boundary & (u > 0.3))[0])
    gate.visible = True
    viewer.dims.current_step = boundary_voxel
    viewer.cursor.position = tuple(scan.data_to_world(boundary_voxel))
    viewer.mouse_over_canvas = True
    viewer.update_status_from_cursor()
    status = viewer.status
    text = status["coordinates"] if isinstance(status, dict) else status
    probs = pred.quantized[(slice(None),) + boundary_voxel] / 255
    for cname, p in zip(pred.class_names, probs):
        assert f"{cname} {p:.2f}" in text, text
    assert f"uncertainty {u[boundary_voxel]:.2f}" in text, text
    for k in (1, 2, 3):
        g = viewer.layers[f"{name} gate {k}"]
        cell = tuple(np.round(g.world_to_data(viewer.cursor.position)).astype(int))
        assert f"gate {k} {g.data[cell]:.2f}" in text, text
    viewer.cursor.position = tuple(scan.data_to_world((-50, -50, -50)))
    viewer.update_status_from_cursor()
    status = viewer.status
    assert "uncertainty" not in (status["coordinates"] if isinstance(status, dict) else status)


def test_uncertainty_of_a_sigmoid_model_and_tta_disagreement():
    # sigmoid: per-channel binary entropy, combined by the maximum
    q = np.array([[[0, 255, 128, 255]], [[0, 0, 0, 128]]], dtype=np.uint8)  # (C=2, 1, 4)
    pred = na.Prediction(quantized=q, output="sigmoid", class_names=("a", "b"), gates=[])
    u = pred.uncertainty
    assert u.shape == (1, 4)
    np.testing.assert_allclose(u[0, :2], 0.0, atol=1e-6)
    np.testing.assert_allclose(u[0, 2:], 1.0, atol=1e-4)
    # softmax: entropy over ln C; uniform is 1
    q = np.full((3, 2), 85, np.uint8)
    q[:, 1] = (255, 0, 0)
    pred = na.Prediction(quantized=q, output="softmax", class_names=("x", "y", "z"), gates=[])
    np.testing.assert_allclose(pred.uncertainty, [1.0, 0.0], atol=1e-3)
    # TTA: the flips' disagreement raises it where it is larger than the entropy
    pred = na.Prediction(
        quantized=q,
        output="softmax",
        class_names=("x", "y", "z"),
        gates=[],
        disagreement=np.array([0, 204], np.uint8),
    )
    np.testing.assert_allclose(pred.uncertainty, [1.0, 0.8], atol=1e-3)


def test_tta_run_reports_disagreement():
    import itertools

    from helpers import make_model, official_spec, reference

    model = make_model(official_spec(dims=3, out_ch=3))
    image = np.random.default_rng(0).normal(size=(16, 32, 32)).astype(np.float32)
    plain = na.predict(image, model, tta=False, normalization="none", tile=(16, 32, 32))
    flipped = na.predict(image, model, tta=True, normalization="none", tile=(16, 32, 32))
    assert plain.disagreement is None
    d = flipped.disagreement
    assert d is not None and d.shape == image.shape and d.dtype == np.uint8
    # oracle: the network on each of the 8 mirrored inputs, flipped back; one tile, no blending
    runs = []
    for r in range(4):
        for axes in itertools.combinations((0, 1, 2), r):
            probs, _ = reference(model, np.flip(image, axes)[None].copy())
            runs.append(np.flip(probs, tuple(a + 1 for a in axes)))
    runs = np.stack(runs)
    expected = 2 * runs.std(0).max(0)
    assert expected.max() > 0.05  # a random network is not flip-invariant
    assert np.abs(d / 255 - expected).max() < 3 / 255
    np.testing.assert_allclose(flipped.probabilities, runs.mean(0), atol=3 / 255)
    assert flipped.quantized.shape == (3,) + image.shape
    np.testing.assert_allclose(flipped.probabilities.sum(0), 1, atol=3 / 255)
    assert np.all(flipped.uncertainty >= d / 255 - 1e-6)
