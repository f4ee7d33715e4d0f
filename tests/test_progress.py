"""Progress and cancel (``inference/progress.py``): a run reports monotonic progress and stops
within one batch of a request.
"""

from __future__ import annotations

import pathlib
import sys
import threading

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
from helpers import FP32, one_sentence, random_image

import napari_attunet as na


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
