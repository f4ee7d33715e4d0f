"""Linked orthogonal views, the work a crosshair move costs (``plugin/orthoviews.py``): each view
re-slices each layer once, and only if its plane moves; the point never echoes between the
viewers. Counted with napari's own events: a layer emits ``set_data`` each time it is sliced."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from napari_attunet.plugin import orthoviews
from napari_attunet.plugin.layers import SourceGeometry, gate_image, gate_kwargs

pytestmark = pytest.mark.usefixtures("_isolated_config")

SHAPE = (20, 24, 28)  # S, P, L: unequal, so that a plane taken on the wrong axis shows


def _five_layers(viewer) -> None:
    """A scan and what a run adds: labels, two gates on coarser grids and the uncertainty."""
    rng = np.random.default_rng(0)
    scan = viewer.add_image(rng.integers(0, 1000, SHAPE).astype(np.int16), name="scan")
    viewer.add_labels(rng.integers(0, 3, SHAPE).astype(np.uint8), name="labels").contour = 1
    source = SourceGeometry.from_layer(scan, 3)
    for k, stride in enumerate((4, 8), start=1):
        cells = tuple(-(-n // stride) for n in SHAPE)
        kwargs = gate_kwargs(source, k, 0, 1, (stride,) * 3, (0, 0, 0), (0.5, 1.0), 2, SHAPE)
        viewer.add_layer(gate_image(rng.random(cells), {**kwargs, "name": f"gate {k}", "visible": True}))
    viewer.add_image(rng.random(SHAPE).astype(np.float32), name="uncertainty")


class Slices:
    """How often each layer of each view is sliced, and each view's point set."""

    def __init__(self, views) -> None:
        self.count: Counter = Counter()
        for plane, model in zip(("axial", "coronal", "sagittal"), views.all_models, strict=True):
            model.dims.events.point.connect(lambda e, p=plane: self.count.update([(p, "point")]))
            for layer in model.layers:
                layer.events.set_data.connect(lambda e, p=plane, n=layer.name: self.count.update([(p, n)]))

    def of(self, plane: str) -> list[int]:
        return [self.count[(plane, name)] for name in ("scan", "labels", "gate 1", "gate 2", "uncertainty")]


def _plane(layer) -> np.ndarray:
    return np.asarray(layer._data_view)


def test_a_click_slices_each_changed_view_once(make_napari_viewer):
    viewer = make_napari_viewer()
    _five_layers(viewer)
    views = orthoviews.show(viewer)
    assert views is not None
    views.set_point((10.0, 12.0, 14.0))
    slices = Slices(views)

    # A click in the axial view (a point anywhere within a voxel, as a mouse gives it) moves
    # the coronal and sagittal planes: each slices each layer once; the axial plane does not move.
    views.set_point((10.2, 5.3, 20.6))
    assert slices.of("axial") == [0] * 5
    assert slices.of("coronal") == [1] * 5
    assert slices.of("sagittal") == [1] * 5
    # one point event per view: no echo (napari's slider snapping the point) and no cascade
    assert [slices.count[(plane, "point")] for plane in ("axial", "coronal", "sagittal")] == [1, 1, 1]
    for model in views.all_models:  # on the voxel grid, the same in the three
        assert tuple(model.dims.point) == (10.0, 5.0, 21.0)

    # what each view shows is the plane through the point
    scan = viewer.layers["scan"].data
    np.testing.assert_array_equal(_plane(viewer.layers["scan"]), scan[10])
    np.testing.assert_array_equal(_plane(views.models["coronal"].layers["scan"]), scan[:, 5, :])
    np.testing.assert_array_equal(_plane(views.models["sagittal"].layers["scan"]), scan[:, :, 21])
    labels = viewer.layers["labels"].data
    assert views.models["sagittal"].layers["labels"].data is labels  # shared, not copied

    # the axial slider (a scroll through the axial planes) slices only the axial view
    slices.count.clear()
    viewer.dims.set_current_step(0, 3)
    assert slices.of("axial") == [1] * 5
    assert slices.of("coronal") == [0] * 5
    assert slices.of("sagittal") == [0] * 5
    for model in views.all_models:
        assert model.dims.point[0] == 3.0
    np.testing.assert_array_equal(_plane(viewer.layers["scan"]), scan[3])

    # the same point again: nothing
    slices.count.clear()
    views.set_point(views.point)
    assert sum(slices.count.values()) == 0
    orthoviews.show(viewer, False)
