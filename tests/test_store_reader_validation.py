"""The reader of result stores in real viewers under Xvfb: a store it cannot show is one
notification naming the store and what is wrong, with no layer added and nothing changed; a store
of an oblique scan lands where the scan is (NGFF 0.4 has no affine: the rotation is kept in the
"attunet" metadata and applied by this reader).

Each broken store is a copy of one real run's store with one part of it corrupted.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
from helpers import _check_message, _errors, make_model, official_spec, snapshot
from test_world_geometry import napari_to_ras, oblique_affine, unique_volume

import napari_attunet as na

zarr = pytest.importorskip("zarr")
nib = pytest.importorskip("nibabel")

pytestmark = pytest.mark.usefixtures("_isolated_config")

SPACING, ORIGIN = (2.5, 0.8, 0.6), (-40.0, 12.0, 7.5)
LAYERS = ["case uncertainty", "case gate 1", "case gate 2", "case gate 3", "case attunet"]


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> pathlib.Path:
    """A store from a real (small) run: a 16 x 20 x 24 scan, one block."""
    model = make_model(official_spec(3), seed=2)
    image = np.random.default_rng(1).normal(size=(16, 20, 24)).astype(np.float32)
    scan = na.io.Volume(image, SPACING, ORIGIN, np.eye(3))
    out = tmp_path_factory.mktemp("stores") / "case.zarr"
    na.predict(scan, model, tile=16, out=out)
    return out


def _attrs(store: pathlib.Path, key: str, change) -> None:
    """Rewrite ``store/key/.zattrs`` as ``change(attrs)`` leaves it (NaN written as JSON's NaN)."""
    path = store / key / ".zattrs"
    attrs = json.loads(path.read_text())
    change(attrs)
    path.write_text(json.dumps(attrs))


def _labels_scale(value):
    def change(attrs):
        attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][1] = value

    return change


def _float_labels(store):
    group = zarr.open_group(str(store / "labels/attunet"), mode="r+", zarr_format=2)
    labels = np.asarray(group["0"]).astype(np.float32)
    group.create_array("0", shape=labels.shape, dtype="float32", overwrite=True)[:] = labels


def _drop_axis(attrs):
    attrs["multiscales"][0]["axes"] = attrs["multiscales"][0]["axes"][1:]


def _short_gate_scale(attrs):
    scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    scale["scale"] = scale["scale"][1:]


def _nan_affine(attrs):
    attrs["attunet"]["affine"] = [[float("nan")] * 4] * 4


# (case, how the copy is broken, words the message must hold)
BROKEN = {
    "float_labels": (_float_labels, "stored as float32, not integers"),
    "negative_scale": (lambda s: _attrs(s, "labels/attunet", _labels_scale(-0.8)), "not positive"),
    "nan_scale": (lambda s: _attrs(s, "labels/attunet", _labels_scale(float("nan"))), "not finite"),
    "zero_scale": (lambda s: _attrs(s, "labels/attunet", _labels_scale(0.0)), "not positive"),
    "missing_labels": (lambda s: shutil.rmtree(s / "labels"), "has no labels (labels/attunet)"),
    "axes_mismatch": (
        lambda s: _attrs(s, "labels/attunet", _drop_axis),
        "its labels/attunet metadata names 2 axes but its array has 3",
    ),
    "uncertainty_axes": (
        lambda s: _attrs(s, "uncertainty", _drop_axis),
        "its uncertainty metadata names 2 axes but its array has 3",
    ),
    "gate_scale_length": (
        lambda s: _attrs(s, "gates/gate2", _short_gate_scale),
        "gates/gate2 scale has 3 values for 4 axes",
    ),
    "missing_uncertainty": (lambda s: shutil.rmtree(s / "uncertainty"), "has no uncertainty map"),
    "nan_affine": (lambda s: _attrs(s, ".", _nan_affine), "affine is not a finite 4x4 matrix"),
    "unknown_output": (
        lambda s: _attrs(s, ".", lambda a: a["attunet"].update(output="relu")),
        "output is 'relu'",
    ),
}


def test_the_good_store_opens(good_store, make_napari_viewer, notes):
    """The store the broken ones are copied from: all its layers, where the scan was, no error."""
    viewer = make_napari_viewer()
    viewer.open(str(good_store), plugin="napari-attunet")
    assert [layer.name for layer in viewer.layers] == LAYERS
    labels = viewer.layers["case attunet"]
    assert np.allclose(labels.scale, SPACING) and np.allclose(labels.translate, ORIGIN)
    assert np.allclose(labels.affine.affine_matrix, np.eye(4))  # axis-aligned: no turn
    assert _errors(notes) == []


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_store_is_one_notification(case, good_store, tmp_path, make_napari_viewer, notes):
    corrupt, words = BROKEN[case]
    store = tmp_path / "case.zarr"
    shutil.copytree(good_store, store)
    corrupt(store)
    before = snapshot(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(store), plugin="napari-attunet")  # as a drag and drop does
    assert [layer.name for layer in viewer.layers] == []
    messages = _errors(notes)
    assert len(messages) == 1, messages
    _check_message(messages[0], str(store))
    assert words in messages[0], messages[0]
    assert snapshot(tmp_path) == before


# ---- an oblique scan -------------------------------------------------------------------------


def test_store_of_an_oblique_scan_lands_where_the_scan_is(tmp_path, make_napari_viewer, notes):
    """A NIfTI turned 17 degrees, predicted into a store: the store's layers and the scan's land
    on the same world points (napari's ``data_to_world``), and both on nibabel's."""
    affine = oblique_affine(17.0, axis=(0.2, 0.3, 1.0), spacing=(0.9, 1.1, 2.0), origin=(-50.0, 20.0, 30.0))
    values = unique_volume((24, 20, 12), seed=3)
    nifti = tmp_path / "tilted.nii.gz"
    nib.save(nib.Nifti1Image(values, affine), str(nifti))
    model = make_model(official_spec(3), seed=2)
    out = tmp_path / "tilted_result.zarr"
    pred = na.predict(na.io.read(nifti), model, tile=16, out=out)
    assert any("NGFF 0.4" in n and "unrotated" in n for n in pred.notes), pred.notes

    viewer = make_napari_viewer()
    (scan,) = viewer.open(str(nifti), plugin="napari-attunet")
    viewer.open(str(out), plugin="napari-attunet")
    assert _errors(notes) == []
    labels = viewer.layers["tilted_result attunet"]
    shape = np.asarray(scan.data).shape
    assert tuple(labels.data.shape) == shape
    data = np.asarray(scan.data)
    for corner in np.ndindex(2, 2, 2):
        index = tuple(int(c * (n - 1)) for c, n in zip(corner, shape, strict=True))
        store_world = np.asarray(labels.data_to_world(index))
        assert np.abs(store_world - np.asarray(scan.data_to_world(index))).max() < 1e-3, index
        ijk = np.argwhere(values == data[index])[0]  # the same voxel in the file
        ras = (affine @ np.array([*ijk, 1.0]))[:3]
        assert np.abs(napari_to_ras(store_world) - ras).max() < 1e-3, index
    far = tuple(n - 1 for n in shape)
    unrotated = np.asarray(labels.scale) * far + np.asarray(labels.translate)  # what NGFF alone says
    assert np.linalg.norm(unrotated - np.asarray(labels.data_to_world(far))) > 5.0  # the turn matters
    for k, gate in enumerate(pred.gates, start=1):  # gate maps on their own grids, turned alike
        layer = viewer.layers[f"tilted_result gate {k}"]
        assert np.allclose(layer.data_to_world((0, 0, 0)), scan.data_to_world(gate.offset), atol=1e-3)
        cell = tuple(n - 1 for n in layer.data.shape)
        centre = np.multiply(cell, gate.stride) + gate.offset
        assert np.allclose(layer.data_to_world(cell), scan.data_to_world(centre), atol=1e-3)
    uncertainty = viewer.layers["tilted_result uncertainty"]
    assert np.allclose(uncertainty.data_to_world(far), scan.data_to_world(far), atol=1e-3)


def test_store_of_an_array_placed_by_an_affine(tmp_path, make_napari_viewer):
    """As the widget runs a layer: an array, its spacing and its world affine (no origin given).
    The store's NGFF translation is the affine's origin, and the reader lands it on the affine."""
    affine = np.eye(4)
    turn = oblique_affine(17.0, axis=(1.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    affine[:3, :3] = turn[:3, :3] @ np.diag(SPACING)
    affine[:3, 3] = ORIGIN
    image = np.random.default_rng(2).normal(size=(16, 20, 24)).astype(np.float32)
    out = tmp_path / "layer.zarr"
    na.predict(image, make_model(official_spec(3), seed=2), spacing=SPACING, affine=affine, tile=16, out=out)
    attrs = zarr.open_group(str(out / "labels/attunet"), mode="r", zarr_format=2).attrs
    assert attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][1]["translation"] == list(
        ORIGIN
    )
    viewer = make_napari_viewer()
    viewer.open(str(out), plugin="napari-attunet")
    labels = viewer.layers["layer attunet"]
    for index in [(0, 0, 0), (15, 19, 23), (15, 0, 23)]:
        assert np.allclose(labels.data_to_world(index), (affine @ [*index, 1.0])[:3], atol=1e-3), index
