"""What the widget shows (``plugin/layers.py``, ``results.py``, ``widget.py``), in real viewers under
Xvfb: overlays that leave the anatomy readable, one gate at a time, Preview as a draft, failures
in the status, a dock that leaves the canvas its room, slider ranges of the scan, the table, and
messages that name what the interface in use offers.

Screenshots go to the test's folder (printed), to be looked at.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import torch
from helpers import X, _check_message, _errors, _settle, _wait, _widget, _with, official_spec, randomise_bn

import napari_attunet as na
from napari_attunet.demo_data import DEMO_CHECKPOINT, DEMO_SCAN
from napari_attunet.models import build
from napari_attunet.models.registry import FAMILIES
from napari_attunet.plugin.layers import GATE_RGB, LABEL_COLOURS, UNCERTAINTY_RGB

pytestmark = pytest.mark.usefixtures("_isolated_config")

PLANES = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}
BRAIN = 0.15 * 255  # the T1 on screen brighter than this is brain (background and CSF are darker)
LONG = 180_000  # ms: a shared 2-core machine may be busy
KEPT = 0.2  # a pixel keeps the T1's grey value when no channel moved by more than 20 % of it


def _screenshot(viewer, qtbot) -> np.ndarray:
    _settle(qtbot, 200)
    return viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)


def _save(image: np.ndarray, path: pathlib.Path) -> None:
    import imageio.v2 as imageio

    imageio.imwrite(path, image.astype(np.uint8))
    print(f"\nscreenshot: {path}")


def _anatomy_kept(viewer, scan, qtbot, point, out: pathlib.Path | None = None) -> dict[str, tuple]:
    """Per plane through ``point``: (brain pixels whose grey value the overlays keep, brain
    pixels), comparing the canvas as shown with the canvas showing the scan alone."""
    layers = list(viewer.layers)
    visible = [layer.visible for layer in layers]
    kept = {}
    for plane, order in PLANES.items():
        viewer.dims.order = order
        viewer.dims.current_step = point
        for _ in range(3):  # the canvas may still be settling into a new layout
            viewer.reset_view()
            shown = _screenshot(viewer, qtbot)
            for layer in layers:
                layer.visible = layer is scan
            alone = _screenshot(viewer, qtbot)
            for layer, was in zip(layers, visible, strict=True):
                layer.visible = was
            if alone.shape == shown.shape:
                break
        grey = alone.mean(-1)
        brain = grey > BRAIN
        same = np.abs(shown - alone).max(-1) <= KEPT * grey
        kept[plane] = (int((same & brain).sum()), int(brain.sum()))
        if out is not None:
            _save(np.concatenate([alone, shown], axis=1), out / f"{plane}.png")
    viewer.dims.order = (0, 1, 2)
    return kept


def _fraction(kept: dict[str, tuple]) -> float:
    return sum(k for k, _ in kept.values()) / sum(n for _, n in kept.values())


def _run_demo(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    (scan,) = viewer.open(str(DEMO_SCAN), plugin="napari-attunet")
    widget = _widget(viewer)
    assert widget.load_checkpoint(DEMO_CHECKPOINT)
    widget.image.value = scan
    widget.show_uncertainty.value = True
    widget.start()
    _wait(qtbot, widget, LONG)
    assert widget.status.value.startswith("done"), widget.status.value
    return viewer, widget, scan


def test_demo_overlays_leave_the_anatomy_readable(make_napari_viewer, qtbot, tmp_path):
    viewer, widget, scan = _run_demo(make_napari_viewer, qtbot)
    name = scan.name
    labels = viewer.layers[f"{name} attunet"]
    gates = [viewer.layers[f"{name} gate {k}"] for k in (1, 2, 3)]
    uncertainty = viewer.layers[f"{name} uncertainty"]

    # Slider ranges are the scan's: the gates' coarser grids (the last cells of the stride-8
    # gate reach 2 voxels past the scan) stretch none of them.
    assert tuple(viewer.dims.nsteps) == scan.data.shape
    for axis, (lo, hi, step) in enumerate(viewer.dims.range):
        first, last = (
            scan.data_to_world(np.zeros(3))[axis],
            scan.data_to_world(np.subtract(scan.data.shape, 1))[axis],
        )
        assert (lo, hi, step) == pytest.approx((first, last, scan.scale[axis]))
    assert any(
        g.data.shape[a] * g.scale[a] > scan.data.shape[a] * scan.scale[a] for g in gates for a in range(3)
    )

    # Maps are drawn in hues of their own, far from every class colour and from each other.
    for rgb in (GATE_RGB, UNCERTAINTY_RGB):
        assert min(np.linalg.norm(np.subtract(rgb, c[:3])) for c in LABEL_COLOURS[1:]) > 0.4
    assert np.linalg.norm(np.subtract(GATE_RGB, UNCERTAINTY_RGB)) > 1.0

    # The thresholds' class names show whole beside their sliders ("white matte" before).
    for slider in widget.thresholds:
        label = slider._labeled_widget()._label_widget.native
        assert label.width() >= label.fontMetrics().horizontalAdvance(label.text()), label.text()

    # Labels, the finest gate and the uncertainty all on: the labels are outlined by default.
    assert [g.visible for g in gates] == [True, False, False]
    assert uncertainty.visible and labels.visible and labels.contour > 0
    centre = tuple(n // 2 for n in scan.data.shape)
    point = (centre[0] + 6, centre[1] + 4, centre[2] + 10)  # off the midline: both classes show
    (tmp_path / "overlays").mkdir()
    kept = _anatomy_kept(viewer, scan, qtbot, point, tmp_path / "overlays")
    fraction = _fraction(kept)
    print(
        "anatomy kept: "
        + ", ".join(f"{p} {k / n:.2f}" for p, (k, n) in kept.items())
        + f"; all {fraction:.2f}"
    )
    for plane, (k, n) in kept.items():
        assert k / n >= 0.6, f"{plane}: {k / n:.2f} of the brain's pixels keep their grey value"
    assert labels.as_layer_data_tuple()[2] == "labels"  # napari's writers and icons still apply

    # Filled labels under the same maps hide the anatomy (the measure tells them apart).
    widget.label_style.value = "filled"
    assert labels.contour == 0
    filled = _fraction(_anatomy_kept(viewer, scan, qtbot, point))
    print(f"anatomy kept with filled labels: {filled:.2f}")
    assert filled < 0.3

    # Auto: filled once no map is shown, outlined again with one.
    widget.label_style.value = widget.label_style.choices[0]
    widget.show_attention.value = False
    widget.show_uncertainty.value = False
    assert labels.contour == 0 and not any(g.visible for g in gates)
    widget.show_attention.value = True
    assert labels.contour > 0

    # One gate at a time, chosen in the selector.
    assert widget.gate.choices == ("gate 1", "gate 2", "gate 3")
    widget.gate.value = "gate 2"
    assert [g.visible for g in gates] == [False, True, False]
    _check_legend(widget, qtbot, labels, gates[1], uncertainty)

    # 3D: the uncertainty is the translucent iso-surface at the level, drawn over the labels'
    # surfaces (which hid it when depth-tested); back in 2D, lines again.
    widget.show_uncertainty.value = True
    widget.uncertainty_level.value = 0.3
    viewer.dims.ndisplay = 3
    assert uncertainty.rendering == "iso" and uncertainty.iso_threshold == pytest.approx(0.3)
    assert uncertainty.blending == "translucent_no_depth" and uncertainty.opacity < 1
    assert uncertainty.colormap.map([0.3])[0, 3] == 1  # the surface is coloured where it is
    viewer.reset_view()
    with_map = _screenshot(viewer, qtbot)
    assert "uncertainty: surface at 0.30" in widget.legend.value
    uncertainty.blending = "translucent"  # depth-tested, as before: the labels hide it
    depth_tested = _screenshot(viewer, qtbot)
    uncertainty.blending = "translucent_no_depth"
    uncertainty.visible = False
    without = _screenshot(viewer, qtbot)
    uncertainty.visible = True
    _save(np.concatenate([without, depth_tested, with_map], axis=1), tmp_path / "3d.png")
    head = without.max(-1) > BRAIN  # the labels' surfaces on screen

    def magenta(shot) -> float:  # share of the head the surface turned towards magenta
        r, g, b = (shot - without).transpose(2, 0, 1)
        return float((head & (r + b - 2 * g > 60)).sum() / head.sum())

    shown, hidden = magenta(with_map), magenta(depth_tested)
    print(f"3D: the uncertainty shows on {shown:.2f} of the head ({hidden:.2f} depth-tested)")
    assert shown > max(0.2, 2 * hidden)
    viewer.dims.ndisplay = 2
    assert uncertainty.blending == "translucent_no_depth" and uncertainty.opacity == 1
    alpha = uncertainty.colormap.map([0.0, 0.3, 0.6])[:, 3]
    assert alpha[0] == 0 and alpha[1] > 0.9 and 0 < alpha[2] < 0.2  # line at the level, faint inside


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(float(c) * 255):02x}" for c in rgba[:3])


def _check_legend(widget, qtbot, labels, gate, uncertainty) -> None:
    """The dock's legend names each colour on the canvas, read from the layers drawing it."""
    widget.show_uncertainty.value = True
    widget.uncertainty_level.value = 0.4
    _settle(qtbot, 200)
    legend = widget.legend
    text = legend.value
    assert legend.native.isVisible() and legend.native.height() >= legend.native.heightForWidth(
        legend.native.width()
    )
    for value, name in ((1, "grey matter"), (2, "white matter")):
        assert f"{_hex(labels.colormap.map(np.array([value]))[0])}" in text
        assert f"{value}&nbsp;{name}" in text
    assert "each border is drawn once" in legend.tooltip
    lo, hi = gate.contrast_limits
    assert f"gate 2: lines at {lo + 0.15 * (hi - lo):.2f}" in text
    assert _hex(GATE_RGB) in text and _hex(UNCERTAINTY_RGB) in text
    assert "uncertainty: line at 0.40" in text and "tinted above it" in legend.tooltip
    # the legend follows the layers, not the plugin's constants: a colormap chosen in napari's
    # layer controls, a map hidden
    from napari_attunet.plugin.layers import iso_lines, map_display

    gate.colormap = iso_lines((1.0, 0.5, 0.0), (0.5,), "mine")
    uncertainty.visible = False
    _settle(qtbot, 200)
    text = legend.value
    assert "#ff8000" in text and f"gate 2: line at {(lo + hi) / 2:.2f}" in text
    assert "uncertainty" not in text and _hex(GATE_RGB) not in text
    uncertainty.visible = True
    gate.colormap = map_display("gate", 2)["colormap"]


def test_outlines_draw_each_boundary_once():
    """napari's contours draw both sides of a boundary; ours the side of the higher label."""
    from napari_attunet.plugin.layers import one_sided_contours

    row = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 1, 1, 0, 0])
    plane = np.repeat(row[None], 5, axis=0)
    out = one_sided_contours(plane, 1)
    assert out[2].tolist() == [0, 0, 1, 0, 0, 2, 0, 0, 2, 0, 1, 0, 0]
    assert out[0].tolist() == out[2].tolist()  # the array's edge is no boundary
    assert one_sided_contours(plane, 2)[2].tolist() == [0, 0, 1, 1, 0, 2, 2, 2, 2, 1, 1, 0, 0]


def test_preview_is_a_draft_that_run_replaces(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    data = np.random.default_rng(2).normal(size=(80, 40, 40)).astype(np.float32)
    image = viewer.add_image(data, name="long", scale=(2.0, 1.0, 1.0))
    widget = _widget(viewer)
    widget.load_checkpoint(checkpoint)
    widget.image.value = image
    viewer.dims.set_point(0, 2.0 * 60)  # slice 60
    widget.preview.clicked.emit()
    _wait(qtbot, widget, LONG)
    assert "long attunet preview" in viewer.layers
    note = widget.region_info
    assert not note.native.isHidden() and note.value.startswith("preview region"), note.value
    assert "44-75 of 80" in note.value and "0-39 of 40" in note.value and "64 x 40 x 40 mm" in note.value
    assert "preview" in widget.volumes.label

    widget.run.clicked.emit()
    _wait(qtbot, widget, LONG)
    from napari.layers import Labels

    assert sum(isinstance(layer, Labels) for layer in viewer.layers) == 1, [
        layer.name for layer in viewer.layers
    ]
    assert "long attunet" in viewer.layers and "long attunet preview" not in viewer.layers
    assert note.native.isHidden() and widget.volumes.label == "volumes"


def test_table_rows_are_label_values_with_one_decimal(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    image = viewer.add_image(
        np.random.default_rng(5).normal(size=(21, 35, 45)).astype(np.float32), name="odd"
    )
    widget = _widget(viewer)
    widget.load_checkpoint(checkpoint)
    widget.image.value = image
    widget.run.clicked.emit()
    _wait(qtbot, widget, LONG)
    table = widget.volumes.value
    assert list(table["index"]) == [1, 2] or list(table["index"]) == ["1", "2"]
    headers = [widget.volumes.native.verticalHeaderItem(r).text() for r in range(2)]
    assert headers == ["1", "2"]
    assert [row[1] for row in table["data"]] == ["organ", "lesion"]
    labels = viewer.layers["odd attunet"].data
    for row, value in zip(table["data"], (1, 2), strict=True):
        assert row[2] == round((labels == value).sum() / 1000, 1)  # 1 mm voxels
        assert all(len(f"{v}".split(".")[-1]) == 1 for v in row[2:])
    # a shape no stride divides: the sliders still run over the scan's slices only
    assert tuple(viewer.dims.nsteps) == (21, 35, 45)


def _nan_layer(viewer, name: str):
    return viewer.add_image(_with(np.nan), name=name)


def test_failed_run_says_why_in_the_status_and_empties_the_table(
    make_napari_viewer, qtbot, checkpoint, notes, tmp_path
):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    good = viewer.add_image(X, name="good")
    widget = _widget(viewer)
    widget.load_checkpoint(checkpoint)
    widget.image.value = good
    widget.run.clicked.emit()
    _wait(qtbot, widget, LONG)
    assert len(widget.volumes.value["data"]) == 2

    long_name = "scan of a patient " + "with a long description " * 3
    widget.image.value = _nan_layer(viewer, long_name)
    widget.run.clicked.emit()
    _wait(qtbot, widget, LONG)
    (message,) = _errors(notes)
    _check_message(message, repr(long_name))
    status = widget.status.value
    assert status == f"Failed: {message}" and "NaN" in status and status.endswith(".")
    assert widget.volumes.value["data"] == []
    assert widget.status.native.wordWrap()
    _settle(qtbot, 300)
    label = widget.status.native  # the whole sentence shows: the label is as tall as its text
    assert label.height() >= label.heightForWidth(label.width()) > 3 * label.fontMetrics().height()

    # The long status wraps in the dock: the canvas keeps at least half the window.
    _settle(qtbot, 300)
    window = viewer.window._qt_window.width()
    canvas = viewer.window._qt_viewer.canvas.native.width()
    print(f"\ncanvas {canvas} px of a {window} px window after a failed run")
    assert window <= 1600 and canvas >= 0.5 * window and viewer.window._qt_window.height() <= 1000
    assert widget.native.width() <= 0.3 * window
    _save(viewer.screenshot(canvas_only=False, flash=False)[..., :3], tmp_path / "failed.png")


def test_canvas_keeps_half_the_window_after_a_run(make_napari_viewer, qtbot, tmp_path, checkpoint):
    """A checkpoint deep in folders and a long layer name: nothing widens the dock."""
    import shutil

    deep = tmp_path.joinpath(*[f"folder-with-a-long-name-{k}" for k in range(8)])
    deep.mkdir(parents=True)
    path = shutil.copy(checkpoint, deep / "a-checkpoint-with-a-long-descriptive-name.safetensors")
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    layer = viewer.add_image(X, name="a layer with a long name " * 4)
    widget = _widget(viewer)
    assert widget.load_checkpoint(path)
    widget.image.value = layer
    widget.run.clicked.emit()
    _wait(qtbot, widget, LONG)
    widget.status.value = widget.status.value + "; " + "a note of the engine " * 20
    _settle(qtbot, 300)
    window = viewer.window._qt_window.width()
    canvas = viewer.window._qt_viewer.canvas.native.width()
    print(f"\ncanvas {canvas} px of a {window} px window after a run")
    assert window <= 1600 and canvas >= 0.5 * window
    _save(viewer.screenshot(canvas_only=False, flash=False)[..., :3], tmp_path / "window.png")


# ---- messages --------------------------------------------------------------------------------


@pytest.fixture
def renamed(tmp_path) -> pathlib.Path:
    """An official network whose tensor names were all changed: it matches no family."""
    torch.manual_seed(0)
    net = randomise_bn(build(official_spec(3, out_ch=2))).eval()
    state = {"renamed_" + k.replace(".", "_"): v for k, v in net.state_dict().items()}
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    return path


def test_cli_messages_are_whole_and_name_the_cli_options(renamed, tmp_path, capsys):
    from napari_attunet.cli import main

    assert main(["info", str(renamed)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err) > 400 and err.count("\n") == 0
    assert "Supported: official (Attention-Gated-Networks), MONAI AttentionUnet" in err
    assert "napari-attunet convert" in err and "--family" in err and "family=..." not in err
    assert err.endswith(".")

    assert main(["info", str(tmp_path / "absent.pt")]) == 1
    err = capsys.readouterr().err
    assert "absent.pt: no such file" in err and "dialog" not in err


def test_cli_info_prints_provenance_as_lines(tmp_path, capsys):
    from napari_attunet.cli import main

    net = randomise_bn(build(official_spec(3, out_ch=2))).eval()
    path = na.save_model(
        net,
        tmp_path / "m.safetensors",
        provenance={"source_sha256": "ab12", "training": {"epochs": 3, "lr": 0.002}},
    )
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("provenance")]
    assert any(line.split() == ["provenance", "/", "source", "sha256", "ab12"] for line in lines), lines
    assert any(line.split() == ["provenance", "/", "training", "/", "epochs", "3"] for line in lines), lines
    assert any(line.split()[-1] == "0.002" for line in lines), lines
    assert "{" not in out and '"' not in out


def test_widget_messages_name_the_widgets_controls(make_napari_viewer, renamed, checkpoint, tmp_path, notes):
    viewer = make_napari_viewer()
    widget = _widget(viewer)

    # a typo in the checkpoint field: a notification naming it, once Return is pressed
    typo = str(tmp_path / "modle.safetensors")
    widget.checkpoint.line_edit.value = typo
    assert _errors(notes) == []  # nothing while typing
    widget.checkpoint.line_edit.native.editingFinished.emit()
    (message,) = _errors(notes)
    _check_message(message, typo)
    assert "'Select file'" in message and widget.model is None

    # a family list (auto and every family), and the wrong-family message points to it
    assert list(widget.family.choices) == [widget.family.choices[0], *FAMILIES]
    assert widget.family.value.startswith("auto")
    notes.clear()
    assert not widget.load_checkpoint(renamed)
    (message,) = _errors(notes)
    _check_message(message, str(renamed))
    assert "'family' list" in message and "family=..." not in message

    # the choice is passed on: a native official checkpoint is refused as a MONAI one
    notes.clear()
    widget.family.value = "monai"
    assert not widget.load_checkpoint(checkpoint)
    (message,) = _errors(notes)
    assert "'official', not 'monai': choose 'auto' in the widget's 'family' list." in message
    widget.family.value = widget.family.choices[0]
    assert widget.load_checkpoint(checkpoint) and widget.model.spec.family == "official"
