"""napari contribution ``sample_data`` (``plugin/samples.py``)."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest

# Each test here runs with its own settings folder (never the user's recent checkpoints).
pytestmark = pytest.mark.usefixtures("_isolated_config")


def test_phantom_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-attunet", "phantom")
    assert viewer.layers["phantom"].data.ndim == 3
    np.testing.assert_allclose(viewer.layers["phantom"].scale, (2.5, 0.8, 0.8))
