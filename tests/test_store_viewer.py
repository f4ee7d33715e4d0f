"""A result store opens in napari (this plugin's reader) with the scan's scale and translation,
gate maps on their own grids, as lazy layers."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
from helpers import make_model, official_spec

import napari_attunet as na

pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")


def test_store_opens_in_napari_where_the_scan_is(make_napari_viewer, tmp_path):
    model = make_model(official_spec(3), seed=2)
    rng = np.random.default_rng(1)
    spacing, origin = (2.5, 0.8, 0.6), (-40.0, 12.0, 7.5)
    scan = na.io.Volume(rng.normal(size=(20, 36, 40)).astype(np.float32), spacing, origin, np.eye(3))
    out = tmp_path / "case.zarr"
    pred = na.predict(scan, model, tile=16, block=16, out=out)
    viewer = make_napari_viewer()
    layers = viewer.open(str(out), plugin="napari-attunet")
    names = [layer.name for layer in layers]
    assert names == ["case uncertainty", "case gate 1", "case gate 2", "case gate 3", "case attunet"]
    labels = viewer.layers["case attunet"]
    assert isinstance(labels.data, da.Array)  # lazy: read from the store as napari asks
    assert np.allclose(labels.scale, spacing) and np.allclose(labels.translate, origin)
    assert np.array_equal(np.asarray(labels.data), pred.labels())
    for k, gate in enumerate(pred.gates, start=1):
        layer = viewer.layers[f"case gate {k}"]
        assert np.allclose(layer.scale, np.multiply(spacing, gate.stride))
        assert np.allclose(layer.translate, np.add(origin, np.multiply(spacing, gate.offset)))
        # cell 0 lands in world where the engine says it is centred
        assert np.allclose(layer.data_to_world((0, 0, 0)), np.add(origin, np.multiply(spacing, gate.offset)))
    assert list(labels.features["class"]) == list(pred.label_names)


@pytest.fixture
def checkpoint(tmp_path):
    model = make_model(official_spec(3, out_ch=3), seed=5)
    return na.save_model(model, tmp_path / "m.safetensors", class_names=["background", "organ", "lesion"])


def _wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def test_widget_runs_on_a_zarr_backed_layer(make_napari_viewer, qtbot, tmp_path, checkpoint, monkeypatch):
    """A zarr layer is read window by window (never whole), in blocks; Run and Preview give
    what they give on the same data held in memory."""
    import zarr

    from napari_attunet.inference import blockwise

    monkeypatch.setenv("NAPARI_ATTUNET_CONFIG", str(tmp_path / "config"))
    monkeypatch.setattr(blockwise, "BLOCK_BUDGET", 20 * 40 * 40)  # several blocks
    rng = np.random.default_rng(4)
    data = rng.normal(size=(40, 48, 48)).astype(np.float32)
    store = zarr.create_array(tmp_path / "scan.zarr", shape=data.shape, chunks=(16, 16, 16), dtype="float32")
    store[:] = data
    viewer = make_napari_viewer()
    lazy = viewer.add_image(da.from_zarr(str(tmp_path / "scan.zarr")), name="lazy", scale=(2.0, 1.0, 1.0))
    eager = viewer.add_image(data, name="eager", scale=(2.0, 1.0, 1.0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    widget.load_checkpoint(checkpoint)
    widget.tile.value = 16
    for layer in (lazy, eager):
        widget.image.value = layer
        widget.run.clicked.emit()
        _wait(qtbot, widget)
        assert widget.status.value.startswith("done"), widget.status.value
    mine, theirs = viewer.layers["lazy attunet"], viewer.layers["eager attunet"]
    assert np.array_equal(mine.data, theirs.data)
    assert np.allclose(mine.scale, theirs.scale)
    for k in (1, 2, 3):
        a, b = viewer.layers[f"lazy gate {k}"], viewer.layers[f"eager gate {k}"]
        assert np.allclose(a.data, b.data, atol=1e-4)
        assert np.allclose(a.scale, b.scale) and np.allclose(a.translate, b.translate)
    assert isinstance(lazy.data, da.Array)  # the layer itself is left as it was

    viewer.dims.set_point(0, 2.0 * 30)
    for layer in (lazy, eager):
        widget.image.value = layer
        widget.preview.clicked.emit()
        _wait(qtbot, widget)
    a, b = viewer.layers["lazy attunet preview"], viewer.layers["eager attunet preview"]
    assert np.array_equal(a.data, b.data) and np.allclose(a.translate, b.translate)
    viewer.layers.selection.active = mine
    viewer.dims.ndisplay = 2
    shot = tmp_path / "zarr_layer_run.png"  # looked at by hand: layers where the scan is
    viewer.screenshot(str(shot), canvas_only=False)
    assert shot.stat().st_size > 0
