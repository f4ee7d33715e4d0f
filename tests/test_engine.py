"""The engine (``inference/engine.py``), ``na.predict`` end to end: one tile gives what the
network gives, the gate maps' geometry, and the options checked before a run.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
from helpers import FP32, TOL_Q, lee_spec, make_model, monai_spec, official_spec, random_image, reference

import napari_attunet as na

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
    assert any(n % s for n, s in zip(shape, spec.total_stride, strict=True))
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
    for k, (got, want) in enumerate(zip(pred.gates, gates, strict=True)):
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
    for gm, geometry in zip(pred.gates, spec.gates, strict=True):
        assert tuple(gm.stride) == tuple(float(s) for s in geometry.stride)
        assert tuple(gm.offset) == tuple(float(o) for o in geometry.offset)
        assert gm.heads == geometry.heads
        assert gm.data.shape[1:] == tuple(-(-n // s) for n, s in zip(shape, geometry.stride, strict=True))
        if spec.family == "monai":  # strided, same-padded convolutions: cells on voxels s*i
            assert all(o == 0.0 for o in gm.offset)
        else:  # max-pooled grids: cell centres at (s - 1) / 2 + s*i
            assert all(o == (s - 1) / 2 for o, s in zip(gm.offset, gm.stride, strict=True))
        assert np.prod(gm.stride) > previous, "finest gate first"
        previous = np.prod(gm.stride)
        assert gm.data.min() >= 0.0 and gm.data.max() <= 1.0


# ---- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [1.0, -0.1, 1.5])
def test_bad_overlap_is_an_input_error(lee2d, overlap):
    with pytest.raises(na.InputError):
        na.predict(random_image((16, 16)), lee2d, overlap=overlap, **FP32)
