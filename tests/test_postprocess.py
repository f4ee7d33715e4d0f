"""What a run returns (``inference/postprocess.py``): labels from thresholds, clean-up,
per-class volumes and uncertainty.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import torch
from helpers import FP32, lee_spec, make_model, random_image

import napari_attunet as na


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


def test_uncertainty_of_a_sigmoid_model_and_tta_disagreement():
    # sigmoid: per-channel binary entropy, combined by the maximum
    q = np.array([[[0, 255, 128, 255]], [[0, 0, 0, 128]]], dtype=np.uint8)  # (C=2, 1, 4)
    pred = na.Prediction(quantized=q, output="sigmoid", class_names=("a", "b"), gates=[])
    u = pred.uncertainty
    assert u.shape == (1, 4)
    np.testing.assert_allclose(u[0, :2], 0.0, atol=1e-6)
    np.testing.assert_allclose(u[0, 2:], 1.0, atol=1e-4)
    # softmax: entropy over ln C; uniform is 1
    q = np.full((3, 2), 85, np.uint8)
    q[:, 1] = (255, 0, 0)
    pred = na.Prediction(quantized=q, output="softmax", class_names=("x", "y", "z"), gates=[])
    np.testing.assert_allclose(pred.uncertainty, [1.0, 0.0], atol=1e-3)
    # TTA: the flips' disagreement raises it where it is larger than the entropy
    pred = na.Prediction(
        quantized=q,
        output="softmax",
        class_names=("x", "y", "z"),
        gates=[],
        disagreement=np.array([0, 204], np.uint8),
    )
    np.testing.assert_allclose(pred.uncertainty, [1.0, 0.8], atol=1e-3)
