"""Sample data for napari's File > Open Sample menu."""

from __future__ import annotations

from ..phantom import make_phantom


def phantom_sample() -> list[tuple]:
    """A 3D phantom with anisotropic spacing, as a scan and its ground-truth labels."""
    image, labels = make_phantom((48, 96, 96), seed=0)
    scale = (2.5, 0.8, 0.8)
    return [
        (image, {"name": "phantom", "scale": scale, "units": "mm",
                 "axis_labels": ("z", "y", "x")}, "image"),
        (labels, {"name": "phantom truth", "scale": scale, "units": "mm",
                  "axis_labels": ("z", "y", "x"), "opacity": 0.4, "visible": False}, "labels"),
    ]
