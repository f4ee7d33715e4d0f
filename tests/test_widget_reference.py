"""The main widget's reference picker (``plugin/reference.py``, ``follower.py``), in real viewers
under Xvfb: Dice and HD95 in the volume table, the disagreement layer, both following edits to
either layer; "none" clears; two runs compared; a label value the result has no class for."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import torch
from helpers import _run_on_scan, _wait, official_spec, randomise_bn

import napari_attunet as na
from napari_attunet.models import build
from napari_attunet.plugin.follower import FALSE_NEGATIVE, FALSE_POSITIVE
from napari_attunet.plugin.results import AGREEMENT_COLUMNS, VOLUME_COLUMNS

pytestmark = pytest.mark.usefixtures("_isolated_config")
WAIT_MS = 30_000


def _columns(widget) -> list[str]:
    return [c or "" for c in widget.volumes.value["columns"]]


def _column(widget, name: str) -> list:
    value = widget.volumes.value
    return [row[value["columns"].index(name)] for row in value["data"]]


def _expected(result, reference):
    """``review.evaluate`` on the two layers' arrays, with the result's voxel size."""
    names = result.metadata["attunet"]["class_names"]
    pred, ref = np.asarray(result.data), np.asarray(reference.data)
    return na.evaluate(pred, ref, spacing=result.scale, class_names=names)


def _shows(widget, expected) -> bool:
    """The table shows ``expected`` (not busy: no newer comparison on the way)."""
    got = widget.results.evaluation
    return (
        not widget.comparison.follower.busy
        and got is not None
        and [r.dice for r in got] == pytest.approx([r.dice for r in expected], abs=1e-12)
        and _column(widget, "Dice") == [f"{r.dice:.3f}" for r in expected]
    )


def _same_rows(got, expected) -> None:
    for g, e in zip(got, expected, strict=True):
        assert (g.label, g.name) == (e.label, e.name)
        assert g.dice == pytest.approx(e.dice, abs=1e-12)
        assert g.hd95_mm == pytest.approx(e.hd95_mm, abs=1e-9, nan_ok=True)


def test_reference_scores_follows_paint_and_clears(make_napari_viewer, qtbot, scan, checkpoint):
    viewer, widget = _run_on_scan(make_napari_viewer, qtbot, scan, checkpoint)
    result = viewer.layers["patient attunet"]
    truth = np.asarray(result.data).copy()
    truth[4:12, 10:24, 12:30] = 2  # a "lesion" the result misses or mislabels
    truth[14:20, 5:15, 5:15] = 0  # organ voxels the reference leaves out
    place = {k: getattr(result, k) for k in ("scale", "translate", "units", "axis_labels")}
    painted = viewer.add_labels(truth, name="painted truth", **place)
    assert _columns(widget) == list(VOLUME_COLUMNS)
    assert widget.reference.value is None and widget.reference.native.itemText(0) == "none"
    names = [c.name for c in widget.reference.choices if c is not None]
    assert names == ["painted truth"]  # the result is not its own reference
    painted.name = "ground truth"  # renamed: the picker follows
    combo = widget.reference.native
    assert "ground truth" in [combo.itemText(i) for i in range(combo.count())]

    widget.reference.value = painted
    expected = _expected(result, painted)
    qtbot.waitUntil(lambda: _shows(widget, expected), timeout=WAIT_MS)
    _same_rows(widget.results.evaluation, expected)
    assert _columns(widget) == [*VOLUME_COLUMNS, *AGREEMENT_COLUMNS]
    assert _column(widget, AGREEMENT_COLUMNS[1]) == [
        "n/a" if np.isnan(r.hd95_mm) else f"{r.hd95_mm:.1f}" for r in expected
    ]
    layer = viewer.layers["patient disagreement"]
    pred = np.asarray(result.data)
    assert np.array_equal(layer.data == FALSE_POSITIVE, (pred != truth) & (pred != 0))
    assert np.array_equal(layer.data == FALSE_NEGATIVE, (pred != truth) & (pred == 0))
    assert layer.data.any() and tuple(layer.scale) == tuple(result.scale)
    assert layer not in widget.reference.choices
    assert not widget.reference_info.native.isHidden() and "false negative" in widget.reference_info.value

    painted.paint((16, 8, 8), 1, refresh=True)  # a brush stroke on the reference
    expected = _expected(result, painted)
    qtbot.waitUntil(lambda: _shows(widget, expected), timeout=WAIT_MS)
    _same_rows(widget.results.evaluation, expected)
    assert layer.data[16, 8, 8] == (0 if pred[16, 8, 8] == 1 else FALSE_POSITIVE)

    result.paint((8, 16, 20), 2, refresh=True)  # and one on the result
    expected = _expected(result, painted)
    qtbot.waitUntil(lambda: _shows(widget, expected), timeout=WAIT_MS)
    assert viewer.layers["patient disagreement"].data[8, 16, 20] == 0  # both say lesion there now

    painted.paint((2, 2, 2), 7, refresh=True)  # a value the result has no class for
    qtbot.waitUntil(lambda: "value 7" in widget.reference_info.value, timeout=WAIT_MS)
    assert "patient disagreement" not in viewer.layers and widget.results.evaluation is None
    assert _columns(widget) == list(VOLUME_COLUMNS)
    painted.paint((2, 2, 2), 0, refresh=True)  # undone: the numbers are back
    qtbot.waitUntil(lambda: _shows(widget, _expected(result, painted)), timeout=WAIT_MS)

    widget.reference.value = None  # "none": no columns, no disagreement layer
    assert _columns(widget) == list(VOLUME_COLUMNS)
    assert "patient disagreement" not in viewer.layers
    assert widget.reference_info.native.isHidden()
    assert _column(widget, "class") == ["organ", "lesion"]


def test_reference_compares_two_runs(make_napari_viewer, qtbot, scan, checkpoint, tmp_path):
    viewer, widget = _run_on_scan(make_napari_viewer, qtbot, scan, checkpoint)
    first = viewer.layers["patient attunet"]
    first.name = "patient run 1"  # kept: the next run adds a layer of its own
    torch.manual_seed(1)
    net = randomise_bn(build(official_spec(3, out_ch=3, axes="")), seed=1).eval()
    with torch.no_grad():
        net.final.bias.copy_(torch.tensor([0.0, 1.2, -0.5]))
    other = tmp_path / "other.safetensors"
    na.save_model(net, other, class_names=["background", "organ", "lesion"])
    widget.load_checkpoint(other)
    widget.run.clicked.emit()
    _wait(qtbot, widget)
    second = viewer.layers["patient attunet"]
    assert [c.name for c in widget.reference.choices if c is not None] == ["patient run 1"]
    widget.reference.value = first
    expected = _expected(second, first)
    qtbot.waitUntil(lambda: _shows(widget, expected), timeout=WAIT_MS)
    _same_rows(widget.results.evaluation, expected)
    disagree = viewer.layers["patient disagreement"].data
    a, b = np.asarray(second.data), np.asarray(first.data)
    assert np.count_nonzero(disagree) == np.count_nonzero(a != b)
    assert np.array_equal(disagree == FALSE_NEGATIVE, (a != b) & (a == 0))

    viewer.layers.remove(first)  # the reference gone: so are its numbers and layer
    qtbot.waitUntil(lambda: _columns(widget) == list(VOLUME_COLUMNS), timeout=WAIT_MS)
    assert widget.reference.value is None and "patient disagreement" not in viewer.layers


def test_attention_toggle_before_any_run(make_napari_viewer, scan):
    """Unticking "show attention" with a scan open and no run yet leaves the scan alone (every
    layer without a gate's tag was taken for a gate of "no run")."""
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(scan), plugin="napari-attunet")
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    widget.show_attention.value = False
    widget.show_attention.value = True
    assert image.visible and widget.reference.value is None
