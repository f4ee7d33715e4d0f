"""A re-run or a threshold change never replaces labels changed by anyone: paint, fill,
``layer.data = ...`` or a write into ``layer.data`` in place (as scripts and plugins do)."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
from helpers import _run_on_scan, _wait

# The scan and checkpoint fixtures are conftest's; each test gets its own settings folder.
pytestmark = pytest.mark.usefixtures("_isolated_config")


def _assign(layer):
    data = layer.data.copy()
    data[2:5, 3:9, 4:10] = 2
    layer.data = data


def _in_place(layer):
    layer.data[1, :, :] = (layer.data[1, :, :] + 1) % 3  # no event at all
    layer.refresh()


def _in_place_same_shape_array(layer):
    layer.data = np.zeros_like(layer.data)


EDITS = {"assignment": _assign, "in place": _in_place, "cleared by assignment": _in_place_same_shape_array}


@pytest.mark.parametrize("how", list(EDITS))
def test_rerun_keeps_labels_changed_without_painting(make_napari_viewer, qtbot, scan, checkpoint, how):
    viewer, widget = _run_on_scan(make_napari_viewer, qtbot, scan, checkpoint)
    labels = viewer.layers["patient attunet"]
    EDITS[how](labels)
    edited = labels.data.copy()
    assert widget.state.edited
    widget.run.clicked.emit()
    _wait(qtbot, widget)
    kept = viewer.layers["patient attunet"]
    assert kept.data.tobytes() == edited.tobytes()  # byte for byte
    assert "patient attunet (new)" in viewer.layers


@pytest.mark.parametrize("how", ["assignment", "in place"])
def test_thresholds_go_to_a_new_layer_after_an_edit(make_napari_viewer, qtbot, scan, checkpoint, how):
    viewer, widget = _run_on_scan(make_napari_viewer, qtbot, scan, checkpoint)
    labels = viewer.layers["patient attunet"]
    EDITS[how](labels)
    edited = labels.data.copy()
    widget.thresholds[0].value = 0.9
    qtbot.wait(400)
    assert viewer.layers["patient attunet"].data.tobytes() == edited.tobytes()
    assert any(name.endswith("(thresholds)") for name in (lay.name for lay in viewer.layers))


def test_untouched_labels_are_updated_in_place(make_napari_viewer, qtbot, scan, checkpoint):
    viewer, widget = _run_on_scan(make_napari_viewer, qtbot, scan, checkpoint)
    widget.thresholds[0].value = 0.9  # the widget's own writes are not edits
    qtbot.wait(400)
    assert not widget.state.edited
    widget.run.clicked.emit()
    _wait(qtbot, widget)
    assert [lay.name for lay in viewer.layers].count("patient attunet") == 1
    assert "patient attunet (new)" not in viewer.layers
