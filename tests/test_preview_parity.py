"""Preview = Run, in the region: a region is predicted with the whole scan's intensity statistics
and half a tile of context around it, so that inside it Preview agrees with a full run."""

from __future__ import annotations

import numpy as np
import pytest

import napari_attunet as na
from napari_attunet import io
from napari_attunet.demo_data import DEMO_CHECKPOINT, DEMO_SCAN
from napari_attunet.training.trainer import dice_per_class

REGION = (slice(30, 62), slice(20, 100), slice(10, 90))  # 32 slices, as the widget's Preview


@pytest.fixture(scope="module")
def demo():
    scan = io.read(DEMO_SCAN)
    model = na.load_model(DEMO_CHECKPOINT)
    full = na.predict(scan, model, tile=48, overlap=0.25, precision="fp32", attention=True)
    return scan, model, full


@pytest.fixture(scope="module")
def preview(demo):
    scan, model, _ = demo
    return na.predict(scan, model, tile=48, overlap=0.25, precision="fp32", region=REGION)


def test_preview_labels_agree_with_the_full_run(demo, preview):
    scan, model, full = demo
    assert preview.probabilities.shape[1:] == tuple(s.stop - s.start for s in REGION)
    inside = full.labels()[REGION]
    dice = dice_per_class(preview.labels(), inside, 3)
    agreement = float((preview.labels() == inside).mean())
    print(f"\npreview vs run in the region: Dice {dice}, voxels agreeing {agreement:.4f}")
    assert min(dice) >= 0.98

    # The old Preview normalized the crop on its own; that is what disagrees with the run.
    crop = np.ascontiguousarray(scan.array[REGION])
    alone = na.predict(crop, model, spacing=scan.spacing, tile=48, overlap=0.25, precision="fp32")
    dice_alone = dice_per_class(alone.labels(), inside, 3)
    print(f"crop normalized on its own: Dice {dice_alone}")
    assert min(dice_alone) < min(dice)


def test_preview_gates_lie_on_the_full_run_grid(demo, preview):
    """Each preview gate cell holds the full run's value at the same world point."""
    scan, model, full = demo
    start = np.array([s.start for s in REGION], dtype=float)
    for mine, theirs in zip(preview.gates, full.gates, strict=True):
        assert mine.stride == theirs.stride
        # cell i of the preview is centred on region voxel offset + stride * i
        position = start + np.asarray(mine.offset)
        cell = (position - np.asarray(theirs.offset)) / np.asarray(theirs.stride)
        np.testing.assert_allclose(cell, np.round(cell), atol=1e-6)
        first = np.round(cell).astype(int)
        shape = mine.data.shape[1:]
        reference = theirs.data[
            (slice(None),) + tuple(slice(f, f + n) for f, n in zip(first, shape, strict=True))
        ]
        assert np.abs(mine.data - reference).mean() < 0.02
