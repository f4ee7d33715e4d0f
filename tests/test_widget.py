"""napari contribution ``napari-attunet.widget`` (``plugin/widget.py``, ``jobs.py``, ``results.py``),
in real viewers under Xvfb: runs, result layers and thresholds, cancel, Preview, channels, the
demo's overlays and readout, and bad layers that leave the widget usable.
"""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import torch
from helpers import (
    X,
    _check_message,
    _errors,
    _run_on_scan,
    _settle,
    _wait,
    _widget,
    _with,
    lee_spec,
    randomise_bn,
    snapshot,
)
from scipy import ndimage

import napari_attunet as na
from napari_attunet.demo_data import DEMO_CHECKPOINT, DEMO_SCAN
from napari_attunet.models import build
from napari_attunet.phantom import make_phantom
from napari_attunet.plugin.layers import GATE_LINES, LABEL_COLOURS

# Each test here runs with its own settings folder (never the user's recent checkpoints).
pytestmark = pytest.mark.usefixtures("_isolated_config")


class ForwardCounter:
    """Counts real forward passes of any torch module named like a network root."""

    def __init__(self):
        self.calls = 0

    def __enter__(self):
        def hook(module, args, output):
            if isinstance(module, na.models.AttentionUNetBase):
                self.calls += 1

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_widget_run_layers_alignment_thresholds(make_napari_viewer, qtbot, scan, checkpoint, tmp_path):
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(scan), plugin="napari-attunet")
    widget = _widget(viewer)
    assert widget.load_checkpoint(checkpoint)
    for name in (
        "image",
        "checkpoint",
        "device",
        "precision",
        "thresholds",
        "show_attention",
        "run",
        "cancel",
        "progress",
        "volumes",
    ):
        assert hasattr(widget, name) and widget[name] is not None
    widget.precision.value = "fp32"
    widget.runtime.value = "torch"  # ForwardCounter sees PyTorch's forward passes
    widget.image.value = image
    with ForwardCounter() as counter:
        widget.run.clicked.emit()
        _wait(qtbot, widget)
    assert counter.calls >= 1
    names = [layer.name for layer in viewer.layers]
    assert names == ["patient", "patient attunet", "patient gate 1", "patient gate 2", "patient gate 3"]
    labels = viewer.layers["patient attunet"]
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    assert list(labels.features["class"]) == ["background", "organ", "lesion"]
    assert [viewer.layers[f"patient gate {k}"].visible for k in (1, 2, 3)] == [True, False, False]

    # Gate cell i of a stride-s gate is centred on voxel (s-1)/2 + s*i: same world point.
    model = na.load_model(checkpoint)
    for k, geometry in enumerate(model.spec.gates, start=1):
        gate = viewer.layers[f"patient gate {k}"]
        # Iso-lines: opaque on its lines, transparent off them and at both ends of its range.
        lo, hi = gate.contrast_limits
        assert gate.blending == "translucent_no_depth" and 0.0 <= lo < hi <= 1.0
        alpha = gate.colormap.map([0.0, 1.0, *GATE_LINES, 0.3])[:, 3]
        assert list(alpha[:2]) == [0, 0] and all(alpha[2:-1] > 0.9) and alpha[-1] == 0
        cell = np.array([1, 2, 3])
        voxel = np.asarray(geometry.offset) + np.asarray(geometry.stride) * cell
        np.testing.assert_allclose(gate.data_to_world(cell), image.data_to_world(voxel), atol=1e-6)

    # A threshold change re-labels from the cache: no forward pass, different labels.
    before = labels.data.copy()
    assert (before == 1).sum() > 100
    organ = widget.state.prediction.probabilities[1][before == 1]
    table_before = widget.volumes.value["data"]
    z = viewer.dims.current_step[0]
    with ForwardCounter() as counter:
        widget.thresholds[0].value = min(0.99, round(float(np.median(organ)) + 0.01, 2))
        expected = widget.state.prediction.labels(widget.threshold_values())
        # The slice on screen follows at once, the rest of the volume once the slider rests.
        assert np.array_equal(labels.data[z], expected[z])
        assert not np.array_equal(before[z], labels.data[z])
        qtbot.waitUntil(lambda: not widget.results.relabel_timer.isActive(), timeout=5_000)
    assert counter.calls == 0
    assert np.array_equal(labels.data, expected)
    assert (labels.data == 1).sum() < (before == 1).sum()
    assert widget.volumes.value["data"] != table_before  # the table follows


def test_rerun_never_overwrites_edited_labels(make_napari_viewer, qtbot, scan, checkpoint):
    viewer, widget = _run_on_scan(make_napari_viewer, qtbot, scan, checkpoint)
    labels = viewer.layers["patient attunet"]
    labels.paint((5, 5, 5), 2, refresh=True)
    edited = labels.data.copy()
    widget.run.clicked.emit()
    _wait(qtbot, widget)
    assert np.array_equal(viewer.layers["patient attunet"].data, edited)
    assert "patient attunet (new)" in viewer.layers


def test_results_land_on_the_layer_the_run_started_from(make_napari_viewer, qtbot, scan, checkpoint):
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(scan), plugin="napari-attunet")
    other = viewer.add_image(np.zeros((8, 16, 16), np.float32), name="other")
    widget = _widget(viewer)
    widget.load_checkpoint(checkpoint)
    widget.image.value = image
    widget.run.clicked.emit()
    widget.image.value = other  # the user switches while the run goes on
    _wait(qtbot, widget)
    assert "patient attunet" in viewer.layers and "other attunet" not in viewer.layers


def test_cancel_leaves_no_layers(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).normal(size=(48, 64, 64)).astype(np.float32), name="big")
    widget = _widget(viewer)
    widget.load_checkpoint(checkpoint)
    widget.tile.value = 16
    widget.run.clicked.emit()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=30_000)
    widget.cancel.clicked.emit()
    _wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert widget.status.value == "cancelled"
    assert widget.run.enabled


def _stalls(qtbot, widget):
    """Longest event-loop gap (s) while the network runs, and while the result lands."""
    from qtpy.QtCore import QTimer

    ticks, last_yield = [], []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    worker = widget.start()
    worker.yielded.connect(lambda step: last_yield.append(time.perf_counter()))
    _wait(qtbot, widget)
    qtbot.wait(50)
    timer.stop()
    assert widget.status.value.startswith("done"), widget.status.value
    ticks = np.asarray(ticks)
    running = ticks[ticks <= last_yield[-1] + 0.01]
    assert len(running) > 10
    return np.diff(running).max(), np.diff(ticks[ticks >= running[-1]]).max()


def test_event_loop_stays_responsive(make_napari_viewer, qtbot, checkpoint):
    """The Qt event loop while the network runs, and while results land.

    The first run of a viewer creates the layers and their Qt controls: under Xvfb with software
    OpenGL napari needs a few hundred ms for a new Labels layer. Re-runs update the layers in
    place and stay responsive.
    """
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).normal(size=(48, 64, 64)).astype(np.float32), name="scan")
    widget = _widget(viewer)
    widget.load_checkpoint(checkpoint)
    widget.tile.value = 32
    running, first_landing = _stalls(qtbot, widget)
    rerun, rerun_landing = _stalls(qtbot, widget)
    print(
        f"\nevent loop, longest stall: {running * 1000:.0f} ms while running, "
        f"{first_landing * 1000:.0f} ms while the first result lands; re-run "
        f"{rerun * 1000:.0f} ms running, {rerun_landing * 1000:.0f} ms landing"
    )
    assert max(running, rerun) < 0.25  # target 0.1 s; slack for a shared 2-core CI machine
    assert rerun_landing < 0.25


def test_preview_runs_a_crop_around_the_current_slice(make_napari_viewer, qtbot, checkpoint):
    from napari_attunet.plugin.run_inputs import PREVIEW_DEPTH

    viewer = make_napari_viewer()
    data = np.random.default_rng(2).normal(size=(80, 40, 40)).astype(np.float32)
    image = viewer.add_image(data, name="long", scale=(2.0, 1.0, 1.0), translate=(5.0, 0, 0))
    widget = _widget(viewer)
    widget.load_checkpoint(checkpoint)
    widget.image.value = image
    viewer.dims.set_point(0, 5.0 + 2.0 * 60)  # slice 60
    widget.preview.clicked.emit()
    _wait(qtbot, widget)
    preview = viewer.layers["long attunet preview"]
    depth = PREVIEW_DEPTH
    assert preview.data.shape == (depth, 40, 40)
    start = 60 - depth // 2
    np.testing.assert_allclose(preview.translate, (5.0 + 2.0 * start, 0.0, 0.0))
    assert "long attunet" not in viewer.layers  # the full run did not happen


def test_several_layers_as_channels(make_napari_viewer, qtbot, tmp_path):
    torch.manual_seed(1)
    spec = lee_spec(2, in_ch=2, out_ch=2, features=(4, 8, 16))
    path = tmp_path / "two.safetensors"
    na.save_model(build(spec).eval(), path, class_names=["background", "thing"])
    viewer = make_napari_viewer()
    t1 = viewer.add_image(np.random.default_rng(3).random((48, 48), np.float32), name="t1")
    t2 = viewer.add_image(np.random.default_rng(4).random((48, 48), np.float32), name="t2")
    widget = _widget(viewer)
    widget.load_checkpoint(path)
    assert not widget.channels.native.isHidden()  # shown for a two-channel model
    widget.image.value = t1
    assert widget.start() is None  # one channel missing: a notification, no run
    widget.channels.value = [t2]
    widget.run.clicked.emit()
    _wait(qtbot, widget)
    assert viewer.layers["t1 attunet"].data.shape == (48, 48)


def test_widget_and_cli_give_the_same_labels(make_napari_viewer, qtbot, tmp_path):
    """A MONAI (RAS) checkpoint on an oblique scan stored LAS: the widget lays the scan out from
    the layer's world transform, the CLI from the file; both must give the same labels."""
    import nibabel as nib
    from monai.networks.nets import AttentionUnet

    from napari_attunet import io
    from napari_attunet.cli import main

    torch.manual_seed(1)
    net = randomise_bn(
        AttentionUnet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)),
        seed=2,
    ).eval()
    checkpoint = tmp_path / "monai.pt"
    torch.save(net.state_dict(), checkpoint)
    image, _ = make_phantom((32, 40, 24), seed=5)
    affine = np.diag([-1.2, 0.9, 2.0, 1.0])  # LAS
    c, s = np.cos(np.radians(12)), np.sin(np.radians(12))
    affine[:3, :3] = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ affine[:3, :3]
    scan = tmp_path / "las.nii.gz"
    nib.save(nib.Nifti1Image((image * 100).astype(np.float32), affine), scan)

    out = tmp_path / "cli"
    assert main(["predict", str(scan), "-c", str(checkpoint), "-o", str(out), "-q"]) == 0
    cli_labels = io.read(out / "las_labels.nii.gz").array

    viewer, widget = _run_on_scan(make_napari_viewer, qtbot, scan, checkpoint)
    widget_labels = np.asarray(viewer.layers["las attunet"].data)
    assert widget_labels.shape == cli_labels.shape
    assert np.array_equal(widget_labels, cli_labels)
    assert len(np.unique(cli_labels)) > 1


# ---- the demo: overlays, uncertainty and the readout --------------------------------------


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
    for layer, was in zip(layers, visible, strict=True):
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
        for row, cname in zip(data["data"], ("grey matter", "white matter"), strict=True):
            assert row[column] == pytest.approx(expected[cname], abs=0.05)  # one decimal
            assert expected[cname] == pytest.approx(
                ((labels.data == pred.label_names.index(cname)) & (u > level)).sum() * voxel
            )
    assert all(a < b for a, b in zip(table[0.6], table[0.2], strict=True))
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
    for cname, p in zip(pred.class_names, probs, strict=True):
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


# ---- bad layers (helpers.bad_files) ---------------------------------------------------------


def _bad_layers():
    import dask.array as da

    return {
        "nan-voxels": lambda v: v.add_image(_with(np.nan), name="ct"),
        "rgb-for-one-channel": lambda v: v.add_image(np.zeros((32, 32, 3), np.uint8), name="ct", rgb=True),
        "2d-on-3d-model": lambda v: v.add_image(X[0], name="ct"),
        "lazy-4e12-voxels": lambda v: v.add_image(  # its result store fits on no disk (~22 TB)
            da.zeros((1_000_000, 2000, 2000), np.float32, chunks=(64, 512, 512)), name="ct"
        ),
    }


@pytest.mark.usefixtures("torch_single_thread")  # as every bad-input test
@pytest.mark.parametrize("kind", ["nan-voxels", "rgb-for-one-channel", "2d-on-3d-model", "lazy-4e12-voxels"])
def test_napari_bad_layer_leaves_run_usable(kind, files, make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    layer = _bad_layers()[kind](viewer)
    widget = _widget(viewer)
    assert widget.load_checkpoint(files["good"])
    widget.image.value = layer
    before = snapshot(files["root"])
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    messages = _errors(notes)
    assert len(messages) == 1, messages
    _check_message(messages[0], "'ct'")
    assert widget.run.enabled and widget.preview.enabled and not widget.cancel.enabled
    assert [lay.name for lay in viewer.layers] == ["ct"]
    assert snapshot(files["root"]) == before


@pytest.mark.usefixtures("torch_single_thread")  # as every bad-input test
def test_napari_lazy_layer_is_never_read_in_the_gui_thread(files, make_napari_viewer, qtbot):
    import threading

    import dask.array as da

    readers = []

    def block(chunk):
        readers.append(threading.current_thread() is threading.main_thread())
        return chunk

    lazy = da.from_array(X, chunks=(4, 16, 16)).map_blocks(block, dtype=X.dtype)
    viewer = make_napari_viewer()
    layer = viewer.add_image(lazy, name="ct", contrast_limits=(0, 1))
    readers.clear()  # napari may draw a slice; from here on, only the run reads
    widget = _widget(viewer)
    assert widget.load_checkpoint(files["good"])
    widget.image.value = layer
    assert widget.start() is not None
    assert readers == []  # start() returned without reading a voxel
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert "ct attunet" in viewer.layers
    assert readers and not any(readers), "blocks were read in the GUI thread"


@pytest.mark.usefixtures("torch_single_thread")  # as every bad-input test
def test_napari_closing_the_viewer_mid_run_cancels_cleanly(files, make_napari_viewer, qtbot, monkeypatch):
    raised = []
    monkeypatch.setattr(sys, "excepthook", lambda *info: raised.append(info))
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(0).random((48, 96, 96)).astype(np.float32), name="ct")
    widget = _widget(viewer)
    assert widget.load_checkpoint(files["good"])
    widget.image.value = layer
    worker = widget.start()
    cancel = widget.jobs.cancel_event
    viewer.close()
    assert cancel.is_set()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    qtbot.wait(200)
    assert raised == []
    assert widget.state is None  # no result was put anywhere
