"""The inference engine, ``na.predict``: equivalence with the network, gate geometry, stitching,
cancel and progress, slice-by-slice 2D, resampling, normalization, TTA, channels, labels and
bad input. Small random networks, small images, real files where a checkpoint is needed.
"""

from __future__ import annotations

import pathlib
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import torch
from helpers import (
    TOL_Q,
    address_space_limit,
    lee_spec,
    make_model,
    monai_spec,
    official_spec,
    one_sentence,
    random_image,
    reference,
    sharpen_gates,
)

import napari_attunet as na
from napari_attunet.phantom import make_phantom

FP32 = dict(precision="fp32", device="cpu")


# ---- shared small networks ---------------------------------------------------------------


@pytest.fixture(scope="module")
def official3d():
    return make_model(official_spec(3), seed=1)


@pytest.fixture(scope="module")
def official2d():
    return make_model(official_spec(2), seed=2)


@pytest.fixture(scope="module")
def monai2d():
    return make_model(monai_spec(2), seed=3)


@pytest.fixture(scope="module")
def lee2d():
    return make_model(lee_spec(2), seed=4)


# ---- one tile: the engine gives what the network gives -------------------------------------

ONE_TILE = {
    # name: (spec, image shape); no shape is a multiple of the total stride
    "official-3D": (official_spec(3), (20, 18, 23)),
    "official-multi-2D": (official_spec(2, in_ch=1, out_ch=3, variant="multi_att_dsv"), (37, 45)),
    "monai-2D": (monai_spec(2, out_ch=3), (37, 45)),
    "leejunhyun-2D-sigmoid": (lee_spec(2, out_ch=1), (30, 27)),
}


@pytest.mark.parametrize("case", list(ONE_TILE))
def test_one_tile_equals_the_network(case):
    spec, shape = ONE_TILE[case]
    assert any(n % s for n, s in zip(shape, spec.total_stride))
    model = make_model(spec, seed=5)
    image = random_image(shape, seed=6)
    calls = []
    pred = na.predict(image, model, normalization="none", progress=lambda d, t: calls.append((d, t)), **FP32)
    assert calls[-1] == (1, 1), "one tile is one batch"
    probs, gates = reference(model, image[None])

    assert pred.probabilities.dtype == np.float32
    assert pred.probabilities.shape == (spec.out_channels,) + shape
    assert np.abs(pred.probabilities - probs).max() <= TOL_Q
    assert pred.quantized.dtype == np.uint8
    assert pred.device == "cpu" and pred.precision == "fp32"
    assert tuple(pred.class_names) == spec.class_labels

    assert len(pred.gates) == len(gates) == len(spec.gates)
    for k, (got, want) in enumerate(zip(pred.gates, gates)):
        assert got.data.shape == want.shape, f"gate {k + 1}"
        assert np.abs(got.data - want).max() <= 1e-5, f"gate {k + 1}"


# ---- gate geometry ---------------------------------------------------------------------------

GEOMETRY = {
    "official-3D": (official_spec(3), (20, 18, 23)),
    "official-grid-3D": (official_spec(3, variant="grid_attention"), (17, 18, 5)),
    "official-2D": (official_spec(2), (33, 40)),
    "leejunhyun-2D": (lee_spec(2, features=(4, 8, 16, 32)), (33, 40)),
    "monai-2D": (monai_spec(2, features=(4, 8, 16, 32)), (33, 40)),
}


@pytest.mark.parametrize("case", list(GEOMETRY))
def test_gate_geometry(case):
    spec, shape = GEOMETRY[case]
    model = make_model(spec, seed=7)
    pred = na.predict(random_image(shape, seed=8), model, normalization="none", **FP32)
    assert len(pred.gates) == len(spec.gates) == len(spec.features) - (2 if spec.family == "official" else 1)
    previous = 0
    for gm, geometry in zip(pred.gates, spec.gates):
        assert tuple(gm.stride) == tuple(float(s) for s in geometry.stride)
        assert tuple(gm.offset) == tuple(float(o) for o in geometry.offset)
        assert gm.heads == geometry.heads
        assert gm.data.shape[1:] == tuple(-(-n // s) for n, s in zip(shape, geometry.stride))
        if spec.family == "monai":  # strided, same-padded convolutions: cells on voxels s*i
            assert all(o == 0.0 for o in gm.offset)
        else:  # max-pooled grids: cell centres at (s - 1) / 2 + s*i
            assert all(o == (s - 1) / 2 for o, s in zip(gm.offset, gm.stride))
        assert np.prod(gm.stride) > previous, "finest gate first"
        previous = np.prod(gm.stride)
        assert gm.data.min() >= 0.0 and gm.data.max() <= 1.0


# ---- stitching ------------------------------------------------------------------------------


def _starts(size: int, tile: int, stride: int, overlap: float) -> list[int]:
    """Window starts: steps of tile * (1 - overlap) rounded down to the stride, the last flush."""
    if tile >= size:
        return [0]
    step = max(stride, int(tile * (1 - overlap)) // stride * stride)
    return list(range(0, size - tile, step)) + [size - tile]


def tile_envelope(model, image: np.ndarray, tile: int, overlap: float):
    """Per voxel (and per gate cell): min, max and count of what the covering tiles say.

    Each tile is run on its own through ``forward_with_attention``. A blend of the tiles, with
    any positive weights, must lie between the min and the max (for two classes, softmax is
    monotonic in the one logit difference), and equal the single tile where only one covers.
    """
    spec = model.spec
    shape = image.shape
    padded = tuple(-(-n // s) * s for n, s in zip(shape, spec.total_stride))
    x = np.zeros(padded, np.float32)
    x[tuple(slice(0, n) for n in shape)] = image
    starts = [_starts(n, tile, s, overlap) for n, s in zip(padded, spec.total_stride)]
    lo = np.full((spec.out_channels,) + padded, np.inf, np.float32)
    hi = np.full_like(lo, -np.inf)
    count = np.zeros(padded, np.int32)
    gates = []
    for g in spec.gates:
        grid = tuple(n // s for n, s in zip(padded, g.stride))
        gates.append(
            [
                np.full((g.heads,) + grid, np.inf, np.float32),
                np.full((g.heads,) + grid, -np.inf, np.float32),
                np.zeros(grid, np.int32),
            ]
        )
    import itertools

    for start in itertools.product(*starts):
        region = tuple(slice(a, a + tile) for a in start)
        probs, maps = reference(model, x[region][None])
        lo[(slice(None),) + region] = np.minimum(lo[(slice(None),) + region], probs)
        hi[(slice(None),) + region] = np.maximum(hi[(slice(None),) + region], probs)
        count[region] += 1
        for (glo, ghi, gcount), g, alpha in zip(gates, spec.gates, maps):
            cells = tuple(slice(a // s, a // s + tile // s) for a, s in zip(start, g.stride))
            glo[(slice(None),) + cells] = np.minimum(glo[(slice(None),) + cells], alpha)
            ghi[(slice(None),) + cells] = np.maximum(ghi[(slice(None),) + cells], alpha)
            gcount[cells] += 1
    crop = (slice(None),) + tuple(slice(0, n) for n in shape)
    out_gates = []
    for (glo, ghi, gcount), g in zip(gates, spec.gates):
        cells = tuple(-(-n // s) for n, s in zip(shape, g.stride))
        gcrop = tuple(slice(0, c) for c in cells)
        out_gates.append((glo[(slice(None),) + gcrop], ghi[(slice(None),) + gcrop], gcount[gcrop]))
    return lo[crop], hi[crop], count[crop[1:]], out_gates


ENVELOPE = {
    # name: (spec, image shape, tile); two classes each
    "official-3D": (official_spec(3), (48, 45, 40), 32),
    "official-multi-2D": (official_spec(2, variant="multi_att_dsv"), (90, 100), 32),
    "leejunhyun-2D": (lee_spec(2), (70, 64), 24),
    "monai-2D": (monai_spec(2), (64, 70), 24),
}


@pytest.mark.parametrize("case", list(ENVELOPE))
def test_stitching_blends_the_tiles(case):
    """The stitched result is a blend of the tiles: exact where one tile covers a voxel,
    between the tiles elsewhere, for the probabilities and for every gate cell."""
    spec, shape, tile = ENVELOPE[case]
    model = sharpen_gates(make_model(spec, seed=29))
    image = random_image(shape, seed=30)
    calls = []
    pred = na.predict(
        image,
        model,
        normalization="none",
        tile=tile,
        overlap=0.5,
        batch_size=4,
        progress=lambda d, t: calls.append((d, t)),
        **FP32,
    )
    assert calls[-1][1] >= 2 and pred.tile == (tile,) * len(shape)
    lo, hi, count, gates = tile_envelope(model, image, tile, 0.5)
    assert (count >= 1).all()
    p = pred.probabilities
    assert (p >= lo - TOL_Q).all() and (p <= hi + TOL_Q).all()
    single = count == 1
    assert single.any() and (count > 1).any()
    assert np.abs(p - lo)[:, single].max() <= TOL_Q
    # where the tiles disagree, the blend is not simply one of them
    spread = (hi - lo)[0] > 0.1
    assert spread.sum() > 20, "the tiles should disagree somewhere"
    inside = (p[0] > lo[0] + 0.01) & (p[0] < hi[0] - 0.01)
    assert inside[spread].mean() > 0.02
    tol = 1e-4  # float32 rounding (folded BN), amplified by the sharpened psi
    for k, (gm, (glo, ghi, gcount)) in enumerate(zip(pred.gates, gates), start=1):
        assert gm.data.shape == glo.shape, f"gate {k}"
        assert (gcount >= 1).all(), f"gate {k}: every cell comes from some tile"
        assert (gm.data >= glo - tol).all() and (gm.data <= ghi + tol).all(), f"gate {k}"
        one = gcount == 1
        if one.any():
            assert np.abs(gm.data - glo)[:, one].max() <= tol, f"gate {k}"


TILED_VS_WHOLE = {
    # name: (spec, image shape, tile, bounds on |tiled - whole| in the interior)
    # The tiles are large for the network's receptive field, which is what makes the interior
    # agree: a tile's border sees zero padding where the whole image has data.
    "leejunhyun-2D": (lee_spec(2), (192, 192), 96, dict(mean=0.005, p99=0.03, gate_mean=0.005)),
    "leejunhyun-3D": (
        lee_spec(3, features=(4, 8)),
        (48, 48, 48),
        32,
        dict(mean=0.01, p99=0.03, gate_mean=0.01),
    ),
    "monai-2D (InstanceNorm)": (monai_spec(2), (192, 192), 96, dict(mean=0.05, p99=0.3, gate_mean=0.02)),
}


@pytest.mark.parametrize("case", list(TILED_VS_WHOLE))
def test_tiled_run_agrees_with_one_big_tile_in_the_interior(case):
    spec, shape, tile, bounds = TILED_VS_WHOLE[case]
    model = make_model(spec, seed=9)
    image, _ = make_phantom(shape, seed=1)
    tiled = na.predict(image, model, normalization="zscore", tile=tile, overlap=0.5, batch_size=4, **FP32)
    whole = na.predict(image, model, normalization="zscore", tile=max(shape), **FP32)
    assert tiled.tile == (tile,) * len(shape)
    assert whole.tile == tuple(-(-n // s) * s for n, s in zip(shape, spec.total_stride))
    margin = 16
    inner = (slice(None),) + tuple(slice(margin, n - margin) for n in shape)
    diff = np.abs(tiled.probabilities[inner] - whole.probabilities[inner])
    figures = {"mean": float(diff.mean()), "p99": float(np.percentile(diff, 99)), "max": float(diff.max())}
    for k, (a, b, g) in enumerate(zip(tiled.gates, whole.gates, spec.gates), start=1):
        assert a.data.shape == b.data.shape
        cells = (slice(None),) + tuple(
            slice(margin // s, n - margin // s) for s, n in zip(g.stride, a.data.shape[1:])
        )
        gd = np.abs(a.data[cells] - b.data[cells])
        figures[f"gate{k}_mean"], figures[f"gate{k}_max"] = float(gd.mean()), float(gd.max())
        assert gd.mean() <= bounds["gate_mean"], figures
    print(f"\ntiled vs whole, {case}: {figures}")
    assert figures["mean"] <= bounds["mean"], figures
    assert figures["p99"] <= bounds["p99"], figures


# ---- cancel and progress ---------------------------------------------------------------------


def _many_tiles(model):
    """96 x 96 in tiles of 32 with half overlap: 25 tiles, 4 batches of at most 8."""
    return random_image((96, 96), seed=10), dict(tile=32, overlap=0.5, normalization="none", **FP32)


def test_cancel_with_an_event_from_the_progress_callback(lee2d):
    image, kwargs = _many_tiles(lee2d)
    stop = threading.Event()
    calls = []

    def progress(done, total):
        calls.append((done, total))
        if done >= 1:
            stop.set()

    with pytest.raises(na.Cancelled) as info:
        na.predict(image, lee2d, progress=progress, cancel=stop, **kwargs)
    assert issubclass(na.Cancelled, Exception)
    assert isinstance(info.value, ValueError)
    assert one_sentence(str(info.value))
    total = calls[-1][1]
    assert total >= 3
    assert max(d for d, _ in calls) == 1, "it stopped within one batch of the request"


def test_cancel_with_a_callable(lee2d):
    image, kwargs = _many_tiles(lee2d)
    calls = []
    with pytest.raises(na.Cancelled):
        na.predict(
            image, lee2d, progress=lambda d, t: calls.append((d, t)), cancel=lambda: len(calls) >= 3, **kwargs
        )
    assert max(d for d, _ in calls) == 2
    # a cancel that never fires changes nothing
    done = na.predict(image, lee2d, cancel=lambda: False, **kwargs)
    plain = na.predict(image, lee2d, **kwargs)
    assert np.array_equal(done.quantized, plain.quantized)


def test_cancel_before_the_start(lee2d):
    image, kwargs = _many_tiles(lee2d)
    stop = threading.Event()
    stop.set()
    calls = []
    with pytest.raises(na.Cancelled):
        na.predict(image, lee2d, cancel=stop, progress=lambda d, t: calls.append((d, t)), **kwargs)
    assert all(d == 0 for d, _ in calls)


def test_progress_is_monotonic_and_ends_at_total(lee2d):
    image, kwargs = _many_tiles(lee2d)
    calls = []
    na.predict(image, lee2d, progress=lambda d, t: calls.append((d, t)), **kwargs)
    assert len(calls) >= 3
    dones = [d for d, _ in calls]
    assert dones == sorted(dones)
    assert all(0 <= d <= t for d, t in calls)
    assert calls[-1][0] == calls[-1][1] >= 2
    assert len({t for _, t in calls}) == 1


# ---- 2D checkpoints on volumes, 3D checkpoints on images ---------------------------------


def test_2d_checkpoint_runs_slice_by_slice(official2d):
    volume = random_image((3, 40, 36), seed=11)
    pred = na.predict(volume, official2d, normalization="none", **FP32)
    assert pred.probabilities.shape == (2, 3, 40, 36)
    assert pred.shape == (3, 40, 36)
    for z in range(volume.shape[0]):
        alone = na.predict(volume[z], official2d, normalization="none", **FP32)
        assert np.abs(pred.probabilities[:, z] - alone.probabilities).max() <= TOL_Q
        for k, (g3, g2) in enumerate(zip(pred.gates, alone.gates)):
            assert np.abs(g3.data[:, z] - g2.data).max() <= 1e-5, f"slice {z} gate {k + 1}"
    for gm, geometry in zip(pred.gates, official2d.spec.gates):
        assert gm.stride == (1.0,) + tuple(float(s) for s in geometry.stride)
        assert gm.offset == (0.0,) + tuple(float(o) for o in geometry.offset)
        assert gm.data.shape[1] == 3
    assert pred.labels().shape == (3, 40, 36)


def test_3d_checkpoint_on_a_2d_image_is_an_input_error(official3d):
    with pytest.raises(na.InputError) as info:
        na.predict(random_image((40, 40)), official3d, **FP32)
    assert one_sentence(str(info.value))
    assert "2D" in str(info.value) and "3D" in str(info.value)


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
    ratio = [t / s for t, s in zip(model.spec.spacing, scan_spacing)]  # input voxels per work voxel
    for gm, geometry in zip(pred.gates, model.spec.gates):
        # each gate cell covers `ratio` times as many input voxels as it would unresampled
        assert gm.stride == pytest.approx([s * r for s, r in zip(geometry.stride, ratio)])
        # work voxel w is centred on input voxel w * ratio (voxel 0 stays, as in MONAI Spacingd)
        assert gm.offset == pytest.approx([o * r for o, r in zip(geometry.offset, ratio)])

    # the same as resampling by hand (scipy, linear, edge values beyond the border), predicting
    # on the training grid, and resampling back
    from scipy.ndimage import map_coordinates

    work = tuple(int(np.round((n - 1) / r + 1)) for n, r in zip(shape, ratio))  # as MONAI rounds
    grid = np.meshgrid(*[np.arange(m) * r for m, r in zip(work, ratio)], indexing="ij")
    small = map_coordinates(image, grid, order=1, mode="nearest").astype(np.float32)
    coarse = na.predict(small, model, normalization="none", **FP32)  # no spacing: no resampling
    assert not any("resampl" in n for n in coarse.notes)
    assert coarse.probabilities.shape == (2,) + work
    grid = np.meshgrid(*[np.arange(n) / r for n, r in zip(shape, ratio)], indexing="ij")
    back = np.stack(
        [map_coordinates(c.astype(np.float32), grid, order=1, mode="nearest") for c in coarse.probabilities]
    )
    assert np.abs(pred.probabilities - back).max() <= 2 * TOL_Q
    for gm, gc in zip(pred.gates, coarse.gates):
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


# ---- test-time augmentation ------------------------------------------------------------------


def test_tta_averages_mirrored_runs(monai2d):
    image = random_image((64, 64), seed=13)  # a multiple of the stride: flips are exact
    plain = na.predict(image, monai2d, normalization="none", **FP32)
    tta = na.predict(image, monai2d, normalization="none", tta=True, **FP32)
    p = tta.probabilities
    assert p.shape == plain.probabilities.shape
    assert p.min() >= 0 and p.max() <= 1
    assert np.abs(p.sum(0) - 1).max() <= 2 * 2 / 255
    assert not np.array_equal(tta.quantized, plain.quantized)
    for g in tta.gates:
        assert g.data.min() >= 0 and g.data.max() <= 1 and np.isfinite(g.data).all()

    # by hand: the mean of the softmax over the four mirrorings of the two axes
    x = torch.from_numpy(image)[None, None]
    expected = 0
    flips = [(), (2,), (3,), (2, 3)]
    with torch.no_grad():
        for axes in flips:
            logits = monai2d(x.flip(axes) if axes else x)
            probs = torch.softmax(logits, 1)
            expected = expected + (probs.flip(axes) if axes else probs)
    expected = (expected / len(flips))[0].numpy()
    assert np.abs(p - expected).max() <= TOL_Q


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


# ---- labels, clean-up and volumes ---------------------------------------------------------------


def test_labels_from_a_softmax_run_are_the_argmax():
    model = make_model(lee_spec(2, out_ch=3), seed=23)
    with torch.no_grad():
        model.Conv_1x1.bias.zero_()
    pred = na.predict(random_image((40, 40), seed=22), model, normalization="none", **FP32)
    labels = pred.labels()
    assert labels.shape == (40, 40)
    assert np.issubdtype(labels.dtype, np.integer)
    assert np.array_equal(labels, pred.quantized.argmax(0))
    assert len(np.unique(labels)) >= 2, "a random net should give more than one class"
    strict = pred.labels([0, 0.9, 0.9])
    fg = pred.probabilities[1:].max(0)
    assert np.all(strict[fg < 0.9] == 0)


def _softmax_prediction(probs: np.ndarray, spacing=None, names=("background", "a", "b")):
    quantized = np.round(np.asarray(probs) * 255).astype(np.uint8)
    return na.Prediction(
        quantized=quantized, output="softmax", class_names=tuple(names), gates=[], spacing=spacing
    )


def test_thresholds_on_softmax_probabilities():
    # four voxels: (bg, a, b) probabilities
    probs = np.array(
        [
            [0.05, 0.92, 0.03],  # a passes 0.9
            [0.15, 0.80, 0.05],  # argmax a, but under 0.9
            [0.02, 0.03, 0.95],  # b passes
            [0.50, 0.45, 0.05],
        ]
    ).T.reshape(3, 2, 2)
    pred = _softmax_prediction(probs)
    assert pred.labels().tolist() == [[1, 1], [2, 0]]
    assert pred.labels([0, 0.9, 0.9]).tolist() == [[1, 0], [2, 0]]
    assert pred.labels([0, 0.4, 0.4]).tolist() == [[1, 1], [2, 1]]  # background ignored
    assert pred.labels([0, 0.99, 0.5]).tolist() == [[0, 0], [2, 0]]


def test_sigmoid_model_thresholds_at_one_half():
    model = make_model(lee_spec(2, out_ch=1), seed=23)
    pred = na.predict(random_image((48, 48), seed=24), model, normalization="none", **FP32)
    assert pred.output == "sigmoid"
    p = pred.probabilities[0]
    labels = pred.labels()
    assert np.array_equal(labels == 1, p >= 0.5)
    assert set(np.unique(labels)) <= {0, 1}
    assert pred.label_names[0] == "background"
    high = pred.labels([0.9])
    assert np.array_equal(high == 1, p >= 0.9)

    # two sigmoid channels: each passes its own threshold; overlaps go to the more probable
    q = np.array([[[0.7, 0.2, 0.6, 0.1]], [[0.4, 0.3, 0.8, 0.1]]])
    two = na.Prediction(
        quantized=np.round(q * 255).astype(np.uint8),
        output="sigmoid",
        class_names=("liver", "tumour"),
        gates=[],
    )
    assert two.labels().tolist() == [[1, 0, 2, 0]]
    assert two.labels([0.5, 0.35]).tolist() == [[1, 0, 2, 0]]
    assert two.labels([0.8, 0.35]).tolist() == [[2, 0, 2, 0]]


def test_min_size_removes_small_components_and_fill_holes_fills():
    shape = (12, 12)
    probs = np.zeros((3,) + shape)
    probs[0] = 1.0
    big = np.zeros(shape, bool)
    big[1:6, 1:6] = True  # a 5x5 ring of class 1 with a one-voxel hole
    big[3, 3] = False
    small = np.zeros(shape, bool)
    small[9:11, 9:11] = True  # 4 voxels of class 1
    exact = np.zeros(shape, bool)
    exact[9:11, 1:4] = True  # 6 voxels of class 2
    for mask, c in ((big, 1), (small, 1), (exact, 2)):
        probs[:, mask] = 0
        probs[c, mask] = 1.0
    pred = _softmax_prediction(probs)
    raw = pred.labels()
    assert (raw == 1).sum() == 24 + 4 and (raw == 2).sum() == 6

    cleaned = pred.labels(min_size=6)
    assert (cleaned[small] == 0).all(), "4 voxels < 6: removed"
    assert (cleaned[exact] == 2).all(), "6 voxels: kept"
    assert (cleaned[big] == 1).all()
    assert cleaned[3, 3] == 0

    filled = pred.labels(fill_holes=True)
    assert filled[3, 3] == 1
    assert (filled[small] == 1).all()
    elsewhere = np.ones(shape, bool)
    elsewhere[3, 3] = False
    assert np.array_equal(filled[elsewhere], raw[elsewhere])
    both = pred.labels(min_size=7, fill_holes=True)
    assert both[3, 3] == 1 and (both[small] == 0).all() and (both[exact] == 0).all()


def test_volumes_use_the_spacing():
    shape = (12, 12, 12)
    probs = np.zeros((3,) + shape)
    probs[0] = 1.0
    probs[:, 1:11, 1:11, 1:11] = 0
    probs[1, 1:11, 1:11, 1:11] = 1.0  # 1000 voxels of class a
    probs[:, 0, 0, 0:3] = 0
    probs[2, 0, 0, 0:3] = 1.0  # 3 voxels of class b
    pred = _softmax_prediction(probs, spacing=(2.0, 1.0, 1.0))
    volumes = pred.volumes_ml()
    assert set(volumes) == {"a", "b"}
    assert volumes["a"] == pytest.approx(2.0)
    assert volumes["b"] == pytest.approx(0.006)
    assert pred.volumes_ml(spacing=(1.0, 1.0, 1.0))["a"] == pytest.approx(1.0)
    labels = pred.labels()
    labels[labels == 2] = 0
    assert pred.volumes_ml(labels)["b"] == 0.0


def test_volumes_from_a_real_run_carry_the_spacing(lee2d):
    pred = na.predict(
        random_image((3, 32, 32), seed=25), lee2d, spacing=(5.0, 0.5, 0.5), normalization="none", **FP32
    )
    labels = pred.labels()
    voxels = int((labels == 1).sum())
    assert pred.volumes_ml()["class 1"] == pytest.approx(voxels * 5.0 * 0.25 / 1000)


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


def test_a_device_that_is_not_there_is_an_input_error(lee2d):
    image = random_image((16, 16))
    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    for device in (missing, "nonsense-device"):
        with pytest.raises(na.InputError) as info:
            na.predict(image, lee2d, device=device, precision="fp32")
        assert one_sentence(str(info.value))
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        with pytest.raises(na.InputError):
            na.predict(image, lee2d, device="mps", precision="fp32")


@pytest.mark.parametrize("precision", ["fp8", "float32", "double", ""])
def test_unknown_precision_is_an_input_error(lee2d, precision):
    with pytest.raises(na.InputError) as info:
        na.predict(random_image((16, 16)), lee2d, device="cpu", precision=precision)
    assert one_sentence(str(info.value))


@pytest.mark.parametrize("overlap", [1.0, -0.1, 1.5])
def test_bad_overlap_is_an_input_error(lee2d, overlap):
    with pytest.raises(na.InputError):
        na.predict(random_image((16, 16)), lee2d, overlap=overlap, **FP32)


@pytest.mark.parametrize("normalization", ["none", None])
def test_a_volume_too_large_for_memory_is_refused_quickly(official3d, normalization):
    huge = np.broadcast_to(np.float32(0), (4000, 4000, 4000))  # a view: no memory
    started = time.perf_counter()
    with address_space_limit(4 * 1024**3):
        with pytest.raises(na.InputError) as info:
            na.predict(huge, official3d, normalization=normalization, **FP32)
    assert time.perf_counter() - started < 10
    assert "GiB" in str(info.value)
    assert one_sentence(str(info.value))
