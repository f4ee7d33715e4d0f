"""Probabilities stored as uint8 levels keep the float argmax: labels read from the levels are
the labels of the float probabilities, even where two classes are within one level."""

from __future__ import annotations

import numpy as np
import torch

from napari_attunet.inference.postprocess import PROBABILITY_LEVELS, keep_argmax, quantize, threshold_labels


def _near_ties(shape, channels: int = 4, seed: int = 0) -> torch.Tensor:
    """Softmax probabilities where the top two classes are often closer than one level."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (channels,) + shape)
    second = rng.integers(0, channels, shape)
    top = logits.max(0)
    # a class just under (or just over) the top one by less than a level's worth
    np.put_along_axis(logits, second[None], (top + rng.uniform(-0.004, 0.004, shape))[None], 0)
    return torch.softmax(torch.from_numpy(logits).float(), 0)


def test_labels_from_levels_are_the_float_argmax():
    probs = _near_ties((40, 30, 20))
    plain = quantize(probs)
    floats = probs.numpy().argmax(0)
    before = int((threshold_labels(plain, "softmax", None) != floats).sum())
    assert before > 100  # the case exists: the lower class wins ties on equal levels
    fixed = quantize(probs)
    keep_argmax(fixed, probs, slab_voxels=7 * 30 * 20)  # in slabs of 7 of the 40 planes
    assert np.array_equal(threshold_labels(fixed, "softmax", None), floats)
    error = np.abs(fixed.astype(np.float64) / PROBABILITY_LEVELS - probs.numpy())
    assert error.max() <= 1 / PROBABILITY_LEVELS + 1e-6  # within one level of its float
    changed = fixed != plain
    assert changed.any(0).sum() == (threshold_labels(plain, "softmax", None) != floats).sum()
    assert np.abs(fixed.astype(int) - plain).max() == 1


def test_a_strided_slab_and_a_2d_plane_are_edited_in_place():
    probs = _near_ties((7, 9), channels=3, seed=1)
    q = np.concatenate([quantize(probs), np.zeros((1, 7, 9), np.uint8)])  # a TTA spread channel
    keep_argmax(q[:3], probs)
    assert np.array_equal(threshold_labels(q[:3], "softmax", None), probs.numpy().argmax(0))
    assert not q[3].any()
