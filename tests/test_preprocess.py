"""From the user's array to the network's input (``inference/preprocess.py``): resampling to the
training spacing, normalization presets, channels, dtypes, bad images, and the input never
modified.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
from helpers import FP32, TOL_Q, lee_spec, make_model, official_spec, one_sentence, random_image

import napari_attunet as na
from napari_attunet.phantom import make_phantom

# ---- resampling to the training spacing ---------------------------------------------------


@pytest.mark.parametrize("scan_spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
def test_resampling_to_the_training_spacing_round_trips(tmp_path, scan_spacing):
    model = make_model(official_spec(3), seed=12)
    path = na.save_model(model, tmp_path / "spaced.safetensors", spacing=(2.0, 2.0, 2.0))
    model = na.load_model(path)
    assert model.spec.spacing == (2.0, 2.0, 2.0)
    image, _ = make_phantom((32, 32, 32), seed=2)
    shape = image.shape

    pred = na.predict(image, model, spacing=scan_spacing, normalization="none", **FP32)
    assert pred.probabilities.shape == (2,) + shape
    assert any("resampl" in note for note in pred.notes), pred.notes
    assert pred.spacing == scan_spacing
    ratio = [
        t / s for t, s in zip(model.spec.spacing, scan_spacing, strict=True)
    ]  # input voxels per work voxel
    for gm, geometry in zip(pred.gates, model.spec.gates, strict=True):
        # each gate cell covers `ratio` times as many input voxels as it would unresampled
        assert gm.stride == pytest.approx([s * r for s, r in zip(geometry.stride, ratio, strict=True)])
        # work voxel w is centred on input voxel w * ratio (voxel 0 stays, as in MONAI Spacingd)
        assert gm.offset == pytest.approx([o * r for o, r in zip(geometry.offset, ratio, strict=True)])

    # the same as resampling by hand (scipy, linear, edge values beyond the border), predicting
    # on the training grid, and resampling back
    from scipy.ndimage import map_coordinates

    work = tuple(int(np.round((n - 1) / r + 1)) for n, r in zip(shape, ratio, strict=True))  # as MONAI rounds
    grid = np.meshgrid(*[np.arange(m) * r for m, r in zip(work, ratio, strict=True)], indexing="ij")
    small = map_coordinates(image, grid, order=1, mode="nearest").astype(np.float32)
    coarse = na.predict(small, model, normalization="none", **FP32)  # no spacing: no resampling
    assert not any("resampl" in n for n in coarse.notes)
    assert coarse.probabilities.shape == (2,) + work
    grid = np.meshgrid(*[np.arange(n) / r for n, r in zip(shape, ratio, strict=True)], indexing="ij")
    back = np.stack(
        [map_coordinates(c.astype(np.float32), grid, order=1, mode="nearest") for c in coarse.probabilities]
    )
    assert np.abs(pred.probabilities - back).max() <= 2 * TOL_Q
    for gm, gc in zip(pred.gates, coarse.gates, strict=True):
        assert np.abs(gm.data - gc.data).max() <= 1e-4

    # a scan already at the training spacing is not resampled
    same = na.predict(small, model, spacing=(2.0, 2.0, 2.0), normalization="none", **FP32)
    assert not any("resampl" in note for note in same.notes)
    assert np.array_equal(same.quantized, coarse.quantized)


# ---- normalization ------------------------------------------------------------------------


def _hu_image(shape=(64, 64), seed=3):
    image, _ = make_phantom(shape, seed=seed)
    return (image * 300.0 - 150.0).astype(np.float32)  # roughly -350 .. 300 HU


def _close(a: na.Prediction, b: na.Prediction) -> bool:
    return np.abs(a.probabilities - b.probabilities).max() <= TOL_Q


def _percentile(x, lo_p, hi_p):
    lo, hi = np.percentile(x, (lo_p, hi_p))
    return (np.clip(x, lo, hi) - lo) / (hi - lo)


def _zscore_foreground(x):
    from skimage.filters import threshold_otsu

    fg = x[x > threshold_otsu(x.astype(np.float32))]
    return (x - fg.mean()) / fg.std()


PRESETS = {
    # name: (the argument to predict, the same normalization done by hand on float64)
    "none": ("none", lambda x: x),
    "zscore": ("zscore", lambda x: (x - x.mean()) / x.std()),
    "zscore dict": ({"mode": "zscore"}, lambda x: (x - x.mean()) / x.std()),
    "zscore_foreground": ("zscore_foreground", _zscore_foreground),
    "ct": ("ct", lambda x: (np.clip(x, -160, 240) + 160) / 400),  # default abdominal window
    "ct dict": ({"mode": "ct", "window": [-100, 200]}, lambda x: (np.clip(x, -100, 200) + 100) / 300),
    "percentile": ("percentile", lambda x: _percentile(x, 0.5, 99.5)),
    "percentile dict": ({"mode": "percentile", "percentiles": [5, 95]}, lambda x: _percentile(x, 5, 95)),
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_normalization_preset_matches_its_definition(monai2d, name):
    argument, by_hand = PRESETS[name]
    image = _hu_image()
    before = image.copy()
    got = na.predict(image, monai2d, normalization=argument, **FP32)
    assert np.array_equal(image, before)
    assert got.probabilities.shape == (2, 64, 64)
    expected = na.predict(
        by_hand(image.astype(np.float64)).astype(np.float32), monai2d, normalization="none", **FP32
    )
    assert _close(got, expected), name
    if name != "none":  # on a CT-like image every preset changes the result
        plain = na.predict(image, monai2d, normalization="none", **FP32)
        assert not np.array_equal(got.quantized, plain.quantized), name


def test_normalization_presets_differ_from_each_other(monai2d):
    image = _hu_image()
    names = ["none", "zscore", "zscore_foreground", "ct", "ct dict"]
    results = {n: na.predict(image, monai2d, normalization=PRESETS[n][0], **FP32) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(results[a].quantized, results[b].quantized), (a, b)
    assert np.array_equal(
        na.predict(image, monai2d, normalization="CT", **FP32).quantized, results["ct"].quantized
    )


@pytest.mark.parametrize(
    "bad", ["foo", "z-score-ish", {"mode": "bogus"}, {"mode": "ct", "window": [200, -100]}]
)
def test_unknown_normalization_is_an_input_error(monai2d, bad):
    with pytest.raises(na.InputError) as info:
        na.predict(_hu_image((16, 16)), monai2d, normalization=bad, **FP32)
    assert one_sentence(str(info.value))


def test_checkpoint_normalization_is_used_by_default(tmp_path, monai2d, official2d):
    image = _hu_image()
    path = na.save_model(monai2d, tmp_path / "ct.safetensors", normalization="ct")
    loaded = na.load_model(path)
    assert loaded.spec.normalization == {"mode": "ct"}
    default = na.predict(image, loaded, **FP32)
    assert np.array_equal(default.quantized, na.predict(image, loaded, normalization="ct", **FP32).quantized)
    assert not np.array_equal(
        default.quantized, na.predict(image, loaded, normalization="none", **FP32).quantized
    )

    window = {"mode": "ct", "window": [-100, 200]}
    loaded = na.load_model(na.save_model(monai2d, tmp_path / "ctw.safetensors", normalization=window))
    assert np.array_equal(
        na.predict(image, loaded, **FP32).quantized,
        na.predict(image, loaded, normalization=window, **FP32).quantized,
    )

    # without metadata: the family's usual preset (MONAI: none, official: zscore)
    assert np.array_equal(
        na.predict(image, monai2d, **FP32).quantized,
        na.predict(image, monai2d, normalization="none", **FP32).quantized,
    )
    assert np.array_equal(
        na.predict(image, official2d, **FP32).quantized,
        na.predict(image, official2d, normalization="zscore", **FP32).quantized,
    )


# ---- the input is never modified --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
@pytest.mark.parametrize("normalization", ["none", "zscore", "ct"])
def test_input_is_never_modified(lee2d, official2d, dtype, normalization):
    rng = np.random.default_rng(14)
    image = (rng.normal(0, 200, (3, 40, 44))).astype(dtype)
    before = image.copy()
    na.predict(image, official2d, normalization=normalization, **FP32)  # slice by slice
    na.predict(image[1], lee2d, normalization=normalization, tta=True, **FP32)
    assert image.dtype == before.dtype
    assert np.array_equal(image, before)
    channels = na.predict(
        [image[0], image[1]], make_model(lee_spec(2, in_ch=2), seed=28), normalization=normalization, **FP32
    )
    assert channels.shape == (40, 44)
    assert np.array_equal(image, before)


# ---- channels ----------------------------------------------------------------------------------


def test_rgb_image_on_a_three_channel_model():
    model = make_model(lee_spec(2, in_ch=3), seed=15)
    rgb = np.random.default_rng(16).integers(0, 256, (40, 48, 3)).astype(np.uint8)
    pred = na.predict(rgb, model, normalization="none", **FP32)
    assert pred.shape == (40, 48)
    as_list = na.predict([rgb[..., c] for c in range(3)], model, normalization="none", **FP32)
    explicit = na.predict(rgb, model, channel_axis=-1, normalization="none", **FP32)
    assert np.array_equal(pred.quantized, as_list.quantized)
    assert np.array_equal(pred.quantized, explicit.quantized)


def test_rgb_image_on_a_one_channel_model_is_an_input_error(lee2d):
    rgb = np.random.default_rng(17).integers(0, 256, (40, 48, 3)).astype(np.uint8)
    with pytest.raises(na.InputError) as info:
        na.predict(rgb, lee2d, **FP32)
    assert one_sentence(str(info.value))


def test_channel_lists_and_channel_axis():
    model = make_model(lee_spec(2, in_ch=2), seed=18)
    a, b = random_image((36, 40), seed=19), random_image((36, 40), seed=20)
    listed = na.predict([a, b], model, normalization="none", **FP32)
    assert listed.shape == (36, 40)
    first = na.predict(np.stack([a, b]), model, channel_axis=0, normalization="none", **FP32)
    middle = na.predict(np.stack([a, b], axis=1), model, channel_axis=1, normalization="none", **FP32)
    last = na.predict(np.stack([a, b], axis=-1), model, channel_axis=-1, normalization="none", **FP32)
    for other in (first, middle, last):
        assert np.array_equal(listed.quantized, other.quantized)
    # and the channels are not interchangeable
    swapped = na.predict([b, a], model, normalization="none", **FP32)
    assert not np.array_equal(listed.quantized, swapped.quantized)

    bad_inputs = [
        ([a, b, a], {}),  # three arrays for two channels
        (a, {}),  # one array for two channels
        (np.stack([a, b, a]), {"channel_axis": 0}),
        ([a, b[:-1]], {}),  # channels of different shapes
    ]
    for image, kwargs in bad_inputs:
        with pytest.raises(na.InputError) as info:
            na.predict(image, model, normalization="none", **kwargs, **FP32)
        assert one_sentence(str(info.value))


# ---- bad input ----------------------------------------------------------------------------------


def _with(value, index=(1, 2, 3)):
    image = random_image((8, 16, 16), seed=26)
    image[index] = value
    return image


BAD_IMAGES = {
    "NaN voxel": lambda: _with(np.nan),
    "inf voxel": lambda: _with(np.inf),
    "-inf voxel": lambda: _with(-np.inf),
    "NaN in float64": lambda: _with(np.nan).astype(np.float64),
    "empty": lambda: np.zeros((0, 16, 16), np.float32),
    "one voxel": lambda: np.ones((1, 1, 1), np.float32),
    "one voxel 2D": lambda: np.ones((1, 1), np.float32),
    "1D": lambda: np.ones(64, np.float32),
    "4D": lambda: np.ones((2, 3, 4, 5), np.float32),
    "5D": lambda: np.ones((2, 3, 4, 5, 6), np.float32),
    "bool": lambda: np.ones((8, 16, 16), bool),
    "complex": lambda: np.ones((8, 16, 16), np.complex64),
    "strings": lambda: np.full((8, 16, 16), "a"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images_are_input_errors(official3d, case):
    image = BAD_IMAGES[case]()
    with pytest.raises(na.InputError) as info:
        na.predict(image, official3d, **FP32)
    assert one_sentence(str(info.value)), str(info.value)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.float16, np.float64]
)
def test_integer_and_half_inputs_are_converted(lee2d, dtype):
    base = np.random.default_rng(27).integers(0, 100, (32, 36))
    image = base.astype(dtype)
    pred = na.predict(image, lee2d, normalization="zscore", **FP32)
    as_float = na.predict(base.astype(np.float32), lee2d, normalization="zscore", **FP32)
    assert pred.shape == (32, 36)
    assert np.abs(pred.probabilities - as_float.probabilities).max() <= TOL_Q
