"""Sliding windows and stitching (``inference/tiling.py``): the stitched result is a blend of
the tiles, and a tiled run agrees with one big tile in the interior.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
from helpers import (
    FP32,
    TOL_Q,
    lee_spec,
    make_model,
    monai_spec,
    official_spec,
    random_image,
    reference,
    sharpen_gates,
)

import napari_attunet as na
from napari_attunet.phantom import make_phantom


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
    padded = tuple(-(-n // s) * s for n, s in zip(shape, spec.total_stride, strict=True))
    x = np.zeros(padded, np.float32)
    x[tuple(slice(0, n) for n in shape)] = image
    starts = [_starts(n, tile, s, overlap) for n, s in zip(padded, spec.total_stride, strict=True)]
    lo = np.full((spec.out_channels,) + padded, np.inf, np.float32)
    hi = np.full_like(lo, -np.inf)
    count = np.zeros(padded, np.int32)
    gates = []
    for g in spec.gates:
        grid = tuple(n // s for n, s in zip(padded, g.stride, strict=True))
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
        for (glo, ghi, gcount), g, alpha in zip(gates, spec.gates, maps, strict=True):
            cells = tuple(slice(a // s, a // s + tile // s) for a, s in zip(start, g.stride, strict=True))
            glo[(slice(None),) + cells] = np.minimum(glo[(slice(None),) + cells], alpha)
            ghi[(slice(None),) + cells] = np.maximum(ghi[(slice(None),) + cells], alpha)
            gcount[cells] += 1
    crop = (slice(None),) + tuple(slice(0, n) for n in shape)
    out_gates = []
    for (glo, ghi, gcount), g in zip(gates, spec.gates, strict=True):
        cells = tuple(-(-n // s) for n, s in zip(shape, g.stride, strict=True))
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
    for k, (gm, (glo, ghi, gcount)) in enumerate(zip(pred.gates, gates, strict=True), start=1):
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
    assert whole.tile == tuple(-(-n // s) * s for n, s in zip(shape, spec.total_stride, strict=True))
    margin = 16
    inner = (slice(None),) + tuple(slice(margin, n - margin) for n in shape)
    diff = np.abs(tiled.probabilities[inner] - whole.probabilities[inner])
    figures = {"mean": float(diff.mean()), "p99": float(np.percentile(diff, 99)), "max": float(diff.max())}
    for k, (a, b, g) in enumerate(zip(tiled.gates, whole.gates, spec.gates, strict=True), start=1):
        assert a.data.shape == b.data.shape
        cells = (slice(None),) + tuple(
            slice(margin // s, n - margin // s) for s, n in zip(g.stride, a.data.shape[1:], strict=True)
        )
        gd = np.abs(a.data[cells] - b.data[cells])
        figures[f"gate{k}_mean"], figures[f"gate{k}_max"] = float(gd.mean()), float(gd.max())
        assert gd.mean() <= bounds["gate_mean"], figures
    print(f"\ntiled vs whole, {case}: {figures}")
    assert figures["mean"] <= bounds["mean"], figures
    assert figures["p99"] <= bounds["p99"], figures
