"""Device and precision choice (``inference/devices.py``): what is not there is one sentence."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import pytest
import torch
from helpers import one_sentence, random_image

import napari_attunet as na


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
