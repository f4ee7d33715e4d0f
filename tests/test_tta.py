"""Test-time augmentation (``inference/tta.py``): the mean of the mirrored runs, and their
disagreement.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import torch
from helpers import FP32, TOL_Q, random_image

import napari_attunet as na


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


def test_tta_run_reports_disagreement():
    import itertools

    from helpers import make_model, official_spec, reference

    model = make_model(official_spec(dims=3, out_ch=3))
    image = np.random.default_rng(0).normal(size=(16, 32, 32)).astype(np.float32)
    plain = na.predict(image, model, tta=False, normalization="none", tile=(16, 32, 32))
    flipped = na.predict(image, model, tta=True, normalization="none", tile=(16, 32, 32))
    assert plain.disagreement is None
    d = flipped.disagreement
    assert d is not None and d.shape == image.shape and d.dtype == np.uint8
    # oracle: the network on each of the 8 mirrored inputs, flipped back; one tile, no blending
    runs = []
    for r in range(4):
        for axes in itertools.combinations((0, 1, 2), r):
            probs, _ = reference(model, np.flip(image, axes)[None].copy())
            runs.append(np.flip(probs, tuple(a + 1 for a in axes)))
    runs = np.stack(runs)
    expected = 2 * runs.std(0).max(0)
    assert expected.max() > 0.05  # a random network is not flip-invariant
    assert np.abs(d / 255 - expected).max() < 3 / 255
    np.testing.assert_allclose(flipped.probabilities, runs.mean(0), atol=3 / 255)
    assert flipped.quantized.shape == (3,) + image.shape
    np.testing.assert_allclose(flipped.probabilities.sum(0), 1, atol=3 / 255)
    assert np.all(flipped.uncertainty >= d / 255 - 1e-6)
