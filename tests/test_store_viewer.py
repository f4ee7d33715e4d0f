"""A result store opens in napari (this plugin's reader) with the scan's scale and translation,
gate maps on their own grids, as lazy layers."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest

import napari_attunet as na
from helpers import make_model, official_spec

pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")


def test_store_opens_in_napari_where_the_scan_is(make_napari_viewer, tmp_path):
    model = make_model(official_spec(3), seed=2)
    rng = np.random.default_rng(1)
    spacing, origin = (2.5, 0.8, 0.6), (-40.0, 12.0, 7.5)
    scan = na.io.Volume(rng.normal(size=(20, 36, 40)).astype(np.float32), spacing, origin,
                        np.eye(3))
    out = tmp_path / "case.zarr"
    pred = na.predict(scan, model, tile=16, block=16, out=out)
    viewer = make_napari_viewer()
    layers = viewer.open(str(out), plugin="napari-attunet")
    names = [layer.name for layer in layers]
    assert names == ["case uncertainty", "case gate 1", "case gate 2", "case gate 3",
                     "case attunet"]
    labels = viewer.layers["case attunet"]
    assert isinstance(labels.data, da.Array)  # lazy: read from the store as napari asks
    assert np.allclose(labels.scale, spacing) and np.allclose(labels.translate, origin)
    assert np.array_equal(np.asarray(labels.data), pred.labels())
    for k, gate in enumerate(pred.gates, start=1):
        layer = viewer.layers[f"case gate {k}"]
        assert np.allclose(layer.scale, np.multiply(spacing, gate.stride))
        assert np.allclose(layer.translate, np.add(origin, np.multiply(spacing, gate.offset)))
        # cell 0 lands in world where the engine says it is centred
        assert np.allclose(layer.data_to_world((0, 0, 0)),
                           np.add(origin, np.multiply(spacing, gate.offset)))
    assert list(labels.features["class"]) == list(pred.label_names)
