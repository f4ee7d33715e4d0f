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
        precision="fp32",
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


def test_a_one_voxel_region_on_a_flipped_upsampled_axis_keeps_its_gate_windows():
    """On a flipped axis the cells kept with a region are centred in (a - 1, b - 1] of the
    laid-out axis; at a factor of 2.6 the windows of the lowest ones were left out."""
    from helpers import make_model, monai_spec, sharpen_gates

    model = sharpen_gates(make_model(monai_spec(3, features=(4, 8, 16), spacing=(2.0, 1.0, 1.0)), seed=962))
    rng = np.random.default_rng(962)
    image = rng.normal(size=(31, 17, 24)).astype(np.float32)
    affine = np.diag([5.2, -2.0, 2.0, 1.0])
    options = dict(
        tile=24, overlap=0.25, normalization="percentile", spacing=(5.2, 2.0, 2.0), precision="fp32"
    )
    options |= dict(affine=affine, orientation="RAS")
    whole = na.predict(image, model, **options)
    region = (slice(0, 17), slice(4, 5), slice(2, 4))
    part = na.predict(image, model, region=region, **options)
    start = np.array([s.start for s in region], dtype=float)
    compared = 0
    for mine, theirs in zip(part.gates, whole.gates, strict=True):
        if mine.data.size == 0:
            continue
        compared += 1
        first = np.round(
            (start + np.asarray(mine.offset) - np.asarray(theirs.offset)) / np.asarray(theirs.stride)
        )
        cells = tuple(slice(int(f), int(f) + n) for f, n in zip(first, mine.data.shape[1:], strict=True))
        assert np.abs(mine.data - theirs.data[(slice(None),) + cells]).max() < 1e-4
    assert compared >= 1


def test_parts_of_a_scan_upsampled_threefold_keep_their_gate_windows():
    """A factor of 3 between scan and network voxels: the gate cells kept with a block or region
    reach past the network voxels its scan voxels are interpolated from; their windows are in."""
    import dask.array as da
    from helpers import make_model, monai_spec, sharpen_gates
    from scipy import ndimage

    model = sharpen_gates(make_model(monai_spec(2, features=(4, 8, 16), spacing=(1.0, 1.0)), seed=3))
    rng = np.random.default_rng(637)
    image = (ndimage.gaussian_filter(rng.normal(size=(7, 33, 48)), 1.5) * 4000 + 300).astype(np.int16)
    options = dict(tile=16, overlap=0.5, normalization="zscore", spacing=(3.0, 0.5, 3.0), precision="fp32")
    whole = na.predict(image, model, **options)
    blocks = na.predict(da.from_array(image, chunks=16), model, block=(16, 5, 9), **options)
    region = (slice(0, 7), slice(0, 33), slice(18, 27))
    preview = na.predict(image, model, region=region, **options)
    for part, index in ((blocks, (slice(None),) * 3), (preview, region)):
        levels = np.abs(
            np.asarray(part.quantized).astype(int) - whole.quantized[(slice(None),) + index].astype(int)
        )
        assert levels.max() <= 1
        start = np.array([s.start or 0 for s in index], dtype=float)
        for mine, theirs in zip(part.gates, whole.gates, strict=True):
            first = np.round(
                (start + np.asarray(mine.offset) - np.asarray(theirs.offset)) / np.asarray(theirs.stride)
            )
            cells = tuple(slice(int(f), int(f) + n) for f, n in zip(first, mine.data.shape[1:], strict=True))
            assert np.abs(mine.data - theirs.data[(slice(None),) + cells]).max() < 1e-4


def test_one_slice_of_a_stack_keeps_its_slice_axis():
    """A 2D network over a volume of one slice, or over a region of one slice: results keep the
    slice axis (they were 2D, and a one-slice region failed with an IndexError)."""
    from helpers import make_model, monai_spec

    model = make_model(monai_spec(2, features=(4, 8, 16)), seed=3)
    volume = np.random.default_rng(0).normal(size=(9, 41, 33)).astype(np.float32)
    one = na.predict(volume[4:5], model, tile=32, normalization="zscore", precision="fp32")
    assert one.quantized.shape == (2, 1, 41, 33) and one.labels().shape == (1, 41, 33)
    whole = na.predict(volume, model, tile=32, overlap=0.0, normalization="zscore", precision="fp32")
    region = (slice(5, 6), slice(0, 12), slice(0, 33))
    part = na.predict(
        volume, model, region=region, tile=32, overlap=0.0, normalization="zscore", precision="fp32"
    )
    assert part.quantized.shape == (2, 1, 12, 33)
    assert (
        np.abs(part.quantized.astype(int) - whole.quantized[(slice(None),) + region].astype(int)).max() <= 1
    )


def test_a_region_narrower_than_a_gate_cell_keeps_no_cell_of_it():
    """Only cells centred in the region are kept (their windows are in its context); a region
    one voxel wide holds none of a coarse gate's cells along that axis."""
    from helpers import make_model, official_spec, sharpen_gates

    model = sharpen_gates(make_model(official_spec(3, features=(4, 8, 16, 32, 64)), seed=2))
    image = np.random.default_rng(3).normal(size=(24, 32, 33)).astype(np.float32)
    whole = na.predict(image, model, tile=16, normalization="zscore", precision="fp32")
    region = (slice(8, 16), slice(0, 32), slice(1, 2))
    part = na.predict(image, model, region=region, tile=16, normalization="zscore", precision="fp32")
    start = np.array([s.start for s in region], dtype=float)
    sizes = []
    for mine, theirs in zip(part.gates, whole.gates, strict=True):
        centres = start[2] + mine.offset[2] + mine.stride[2] * np.arange(mine.data.shape[3])
        assert ((centres >= 1) & (centres < 2)).all()
        sizes.append(mine.data.shape[3])
        if mine.data.size:
            first = np.round(
                (start + np.asarray(mine.offset) - np.asarray(theirs.offset)) / np.asarray(theirs.stride)
            )
            cells = tuple(slice(int(f), int(f) + n) for f, n in zip(first, mine.data.shape[1:], strict=True))
            assert np.abs(mine.data - theirs.data[(slice(None),) + cells]).max() < 1e-4
    assert 0 in sizes
