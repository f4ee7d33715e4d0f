"""The plan of a run (``inference/plan.py``): 2D checkpoints on volumes slice by slice, 3D
checkpoints refused on images, and memory checked from shapes before anything is allocated.
"""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
from helpers import FP32, TOL_Q, address_space_limit, one_sentence, random_image

import napari_attunet as na

# ---- 2D checkpoints on volumes, 3D checkpoints on images ---------------------------------


def test_2d_checkpoint_runs_slice_by_slice(official2d):
    volume = random_image((3, 40, 36), seed=11)
    pred = na.predict(volume, official2d, normalization="none", **FP32)
    assert pred.probabilities.shape == (2, 3, 40, 36)
    assert pred.shape == (3, 40, 36)
    for z in range(volume.shape[0]):
        alone = na.predict(volume[z], official2d, normalization="none", **FP32)
        assert np.abs(pred.probabilities[:, z] - alone.probabilities).max() <= TOL_Q
        for k, (g3, g2) in enumerate(zip(pred.gates, alone.gates, strict=True)):
            assert np.abs(g3.data[:, z] - g2.data).max() <= 1e-5, f"slice {z} gate {k + 1}"
    for gm, geometry in zip(pred.gates, official2d.spec.gates, strict=True):
        assert gm.stride == (1.0,) + tuple(float(s) for s in geometry.stride)
        assert gm.offset == (0.0,) + tuple(float(o) for o in geometry.offset)
        assert gm.data.shape[1] == 3
    assert pred.labels().shape == (3, 40, 36)


def test_3d_checkpoint_on_a_2d_image_is_an_input_error(official3d):
    with pytest.raises(na.InputError) as info:
        na.predict(random_image((40, 40)), official3d, **FP32)
    assert one_sentence(str(info.value))
    assert "2D" in str(info.value) and "3D" in str(info.value)


# ---- memory --------------------------------------------------------------------------------


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
