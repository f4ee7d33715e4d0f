"""Preview = Run, in the region: a region is predicted with the whole scan's intensity statistics
and every window of the full run that reaches into it (on the full run's resampled grid), so
that inside it Preview is the full run."""

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
    assert agreement == 1.0
    levels = np.abs(preview.quantized.astype(int) - full.quantized[(slice(None),) + REGION].astype(int))
    assert levels.max() <= 1

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
        assert np.abs(mine.data - reference).max() < 1e-4


@pytest.mark.parametrize("lazy", [False, True], ids=["in-memory", "dask"])
def test_preview_of_a_resampled_reoriented_scan_is_the_full_run(lazy):
    """The network's spacing differs from the scan's and it sees the scan flipped: the region's
    crop is resampled on the full run's grid, normalized with the resampled volume's statistics."""
    from helpers import make_model, official_spec, sharpen_gates
    from scipy import ndimage

    spec = official_spec(3, features=(4, 8, 16, 32, 64), spacing=(2.0, 1.0, 1.0))
    model = sharpen_gates(make_model(spec, seed=3))
    rng = np.random.default_rng(7)
    image = (ndimage.gaussian_filter(rng.normal(size=(45, 60, 70)), 2.0) * 4000 + 300).astype(np.int16)
    options = dict(
        tile=32,
        normalization="zscore",
        spacing=(1.3, 0.7, 1.1),
        affine=np.diag([-1.3, 0.7, -1.1, 1.0]),
        orientation="RAS",
    )
    full = na.predict(image, model, **options)
    region = (slice(18, 30), slice(13, 57), slice(9, 70))
    source = image
    if lazy:
        import dask.array as da

        source = da.from_array(image, chunks=16)
    preview = na.predict(source, model, region=region, **options)
    levels = np.abs(preview.quantized.astype(int) - full.quantized[(slice(None),) + region].astype(int))
    assert levels.max() <= 1
    assert np.array_equal(preview.labels(), full.labels()[region])
    start = np.array([s.start for s in region], dtype=float)
    compared = 0
    for mine, theirs in zip(preview.gates, full.gates, strict=True):
        if mine.data.size == 0:  # no cell of this gate is centred in the region
            continue
        compared += 1
        cell = (start + np.asarray(mine.offset) - np.asarray(theirs.offset)) / np.asarray(theirs.stride)
        np.testing.assert_allclose(cell, np.round(cell), atol=1e-6)
        first = np.round(cell).astype(int)
        index = tuple(slice(f, f + n) for f, n in zip(first, mine.data.shape[1:], strict=True))
        assert np.abs(mine.data - theirs.data[(slice(None),) + index]).max() < 1e-4
    assert compared >= 2


@pytest.mark.parametrize("region", [(slice(0, 4), slice(0, 8)), (slice(5, 5), slice(0, 8), slice(0, 8))])
def test_a_bad_region_is_one_sentence(region):
    from helpers import make_model, official_spec, one_sentence

    model = make_model(official_spec(3, features=(4, 8, 16, 32, 64)), seed=1)
    image = np.zeros((12, 16, 16), np.float32)
    with pytest.raises(na.InputError) as caught:
        na.predict(image, model, region=region, normalization="none")
    assert one_sentence(str(caught.value)) and "region" in str(caught.value)
