"""A result store opens in napari (this plugin's reader) with the scan's scale and translation,
gate maps on their own grids, as lazy layers."""

from __future__ import annotations

import pathlib
import sys
import time
import traceback

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


def _zarr_layer(viewer, tmp_path, shape, seed=4, name="lazy"):
    import zarr

    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    path = tmp_path / f"{name}_scan.zarr"
    store = zarr.create_array(path, shape=data.shape, chunks=(16, 16, 16), dtype="float32")
    store[:] = data
    layer = viewer.add_image(
        da.from_zarr(str(path)), name=name, scale=(2.0, 1.0, 1.0), translate=(5.0, -3.0, 1.0)
    )
    return data, layer


def _store_widget(viewer, tmp_path, checkpoint, monkeypatch):
    """A zarr-backed 48^3 layer and the widget set to run it in 27 blocks of 16^3."""
    from napari_attunet.inference import blockwise

    monkeypatch.setenv("NAPARI_ATTUNET_CONFIG", str(tmp_path / "config"))
    monkeypatch.setattr(blockwise, "BLOCK_BUDGET", 32**3)  # 27 blocks of 16^3
    data, lazy = _zarr_layer(viewer, tmp_path, (48, 48, 48))
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    widget.load_checkpoint(checkpoint)
    widget.tile.value = 16
    widget.image.value = lazy
    return data, lazy, widget


def _store_layers(viewer):
    from napari_attunet.plugin.live_store import STORE_TAG

    return [layer for layer in viewer.layers if STORE_TAG in layer.metadata]


def _filled(view) -> float:
    """The share of a stored uncertainty map written so far (0 is the fill value)."""
    return float(np.mean(np.asarray(view) > 0))


def test_store_backed_layers_fill_in_as_blocks_finish(
    make_napari_viewer, qtbot, tmp_path, checkpoint, monkeypatch
):
    """A zarr layer runs into an OME-Zarr store beside the scan's store; the result layers read
    the store (not numpy arrays), appear before the run ends and fill in as blocks finish, and
    equal the in-memory run, placed where the scan is. Then the labels can be painted (into the
    store) and thresholds go to a read-only view layer."""
    from qtpy.QtCore import QTimer

    from napari_attunet.plugin import live_store
    from napari_attunet.plugin.store_views import StoreView

    monkeypatch.setattr(live_store, "MIN_REFRESH_MS", 20)
    viewer = make_napari_viewer()
    data, lazy, widget = _store_widget(viewer, tmp_path, checkpoint, monkeypatch)
    out = tmp_path / "lazy_attunet.zarr"
    assert not widget.store_info.native.isHidden() and str(out) in widget.store_info.value
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    widget.run.clicked.emit()
    run = widget.results.store_run
    qtbot.waitUntil(lambda: len(_store_layers(viewer)) == 5 or not widget.busy, timeout=120_000)
    opened = time.perf_counter()  # the layers are in: from here on only refreshes
    gate = viewer.layers["lazy gate 1"]  # visible: napari slices it

    def drawn():  # what napari draws of it (refreshed from the partial store)
        return gate._slice.image.raw

    qtbot.waitUntil(lambda: bool(np.any(drawn() > 0)) or not widget.busy, timeout=120_000)
    assert widget.jobs.running, "the run ended before its layers showed a block"
    assert run.refreshes >= 1
    filled = _filled(viewer.layers["lazy uncertainty"].data)
    assert 0.0 < filled < 1.0, filled  # some blocks in, some still to come
    assert not viewer.layers["lazy attunet"].editable  # the engine still writes there
    assert not out.exists()  # written under a hidden name until complete
    mid = tmp_path / "store_run_mid.png"  # looked at by hand
    viewer.screenshot(str(mid), canvas_only=False)
    _wait(qtbot, widget)
    timer.stop()
    assert widget.status.value.startswith("done"), widget.status.value
    assert run.refreshes >= 1 and out.is_dir()
    gaps = np.diff([t for t in ticks if t > opened])
    print(
        f"\nstore run: {run.refreshes} refreshes, {1000 * run.refresh_seconds / run.refreshes:.0f} ms each; "
        f"longest event-loop gap after the layers came {1000 * gaps.max():.0f} ms"
    )
    assert gaps.max() < 1.0  # ~0.05-0.15 s here; slack for a shared, loaded 2-core machine

    labels = viewer.layers["lazy attunet"]
    assert not isinstance(labels.data, np.ndarray)  # the store's own labels array
    assert str(out) in str(labels.data.store.root) and labels.editable
    for layer in _store_layers(viewer):
        assert not isinstance(layer.data, np.ndarray)
        if isinstance(layer.data, StoreView):
            assert str(out) in str(layer.data.array.store.root)
    assert _filled(viewer.layers["lazy uncertainty"].data) == 1.0

    model = na.load_model(checkpoint)
    expected = na.predict(data, model, spacing=(2.0, 1.0, 1.0), tile=16)
    assert np.array_equal(np.asarray(labels.data), expected.labels())
    assert np.allclose(labels.scale, (2.0, 1.0, 1.0)) and np.allclose(labels.translate, (5.0, -3.0, 1.0))
    for k, gate in enumerate(expected.gates, start=1):
        layer = viewer.layers[f"lazy gate {k}"]
        assert np.allclose(np.asarray(layer.data), gate.data[0], atol=1e-4)
        assert np.allclose(layer.scale, np.multiply((2.0, 1.0, 1.0), gate.stride))
        assert np.allclose(
            layer.translate, np.add((5.0, -3.0, 1.0), np.multiply((2.0, 1.0, 1.0), gate.offset))
        )
    unc = np.asarray(viewer.layers["lazy uncertainty"].data)
    assert np.abs(unc - expected.uncertainty).max() <= 0.5 / 255 + 1e-6
    expected_ml = expected.volumes_ml(expected.labels(), (2.0, 1.0, 1.0))
    assert np.allclose(widget.volumes.value["data"][0][2], round(expected_ml["organ"], 1), atol=0.051)
    end = tmp_path / "store_run_end.png"  # looked at by hand
    viewer.screenshot(str(end), canvas_only=False)

    # paint writes into the store; a threshold change goes to a read-only layer, the paint stays
    labels.selected_label = 2
    labels.paint((10, 10, 10), 2, refresh=True)
    widget.argmax.value = False
    widget.thresholds[0].value = 0.9
    view = viewer.layers["lazy attunet (thresholds)"]
    assert not view.editable
    qtbot.waitUntil(lambda: widget.results._counting is None, timeout=30_000)
    import zarr

    stored = zarr.open_array(str(out / "labels/attunet/0"), mode="r")
    assert stored[10, 10, 10] == 2  # the edit is on disk
    assert np.array_equal(np.asarray(view.data), expected.labels(widget.threshold_values()))


def test_cancel_removes_the_partial_store_and_its_layers(
    make_napari_viewer, qtbot, tmp_path, checkpoint, monkeypatch
):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    _, lazy, widget = _store_widget(viewer, tmp_path, checkpoint, monkeypatch)
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        widget.run.clicked.emit()
        qtbot.waitUntil(lambda: len(_store_layers(viewer)) == 5 or not widget.busy, timeout=60_000)
        assert widget.jobs.running and len(_store_layers(viewer)) == 5  # labels, 3 gates, uncertainty
        widget.cancel.clicked.emit()
        _wait(qtbot, widget)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert widget.status.value == "cancelled"
    assert _store_layers(viewer) == []
    assert [p.name for p in tmp_path.iterdir() if "attunet" in p.name] == []  # no store, no partial
    messages = [str(n.message) for n in seen]
    assert any("partial store lazy_attunet.zarr and its 5 layers were removed" in m for m in messages), (
        messages
    )
    assert widget.run.enabled


def test_closing_the_viewer_mid_store_run_leaves_no_store(
    make_napari_viewer, qtbot, tmp_path, checkpoint, monkeypatch
):

    raised = []
    monkeypatch.setattr(sys, "excepthook", lambda *info: raised.append(info))
    viewer = make_napari_viewer()
    _, lazy, widget = _store_widget(viewer, tmp_path, checkpoint, monkeypatch)
    worker = widget.start()
    qtbot.waitUntil(lambda: bool(_store_layers(viewer)) or not worker.is_running, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    qtbot.wait(200)
    assert raised == [], "".join(traceback.format_exception(*raised[0]))

    def left():
        return [p.name for p in tmp_path.iterdir() if "attunet" in p.name]

    qtbot.waitUntil(lambda: left() == [], timeout=10_000)  # an abandoned engine is closed after 0.5 s


def test_store_location(tmp_path, monkeypatch):
    """Beside the scan's zarr store when writable, else the results cache; never a taken name."""
    import zarr

    from napari_attunet.plugin.store_location import RESULTS_ENV, default_folder, unique_store

    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "cache"))
    zarr.create_array(tmp_path / "scans" / "ct.zarr", shape=(4, 4), dtype="uint8")

    class Layer:
        source = None

    on_disk = da.from_zarr(str(tmp_path / "scans" / "ct.zarr"))
    assert default_folder(Layer(), on_disk) == tmp_path / "scans"
    opened = zarr.open_array(str(tmp_path / "scans" / "ct.zarr"), mode="r")
    assert default_folder(Layer(), opened) == tmp_path / "scans"
    assert default_folder(Layer(), da.zeros((4, 4))) == tmp_path / "cache"  # in memory: the cache
    folder = tmp_path / "scans"
    assert unique_store(folder, "ct scan") == folder / "ct_scan_attunet.zarr"
    (folder / "ct_scan_attunet.zarr").mkdir()
    (folder / ".ct_scan_attunet-2.zarr.partial-1a2b3c4d").mkdir()  # another run is writing it
    assert unique_store(folder, "ct scan") == folder / "ct_scan_attunet-3.zarr"
