"""Sample data for napari's File > Open Sample menu."""

from __future__ import annotations

from ..phantom import make_phantom


def phantom_sample() -> list[tuple]:
    """A 3D phantom with anisotropic spacing, as a scan and its ground-truth labels."""
    image, labels = make_phantom((48, 96, 96), seed=0)
    scale = (2.5, 0.8, 0.8)
    return [
        (image, {"name": "phantom", "scale": scale, "units": "mm", "axis_labels": ("z", "y", "x")}, "image"),
        (
            labels,
            {
                "name": "phantom truth",
                "scale": scale,
                "units": "mm",
                "axis_labels": ("z", "y", "x"),
                "opacity": 0.4,
                "visible": False,
            },
            "labels",
        ),
    ]


def mni152_sample() -> list[tuple]:
    """The bundled 2 mm MNI152 T1 template, read like any scan (spacing, origin, orientation)."""
    from ..demo_data import DEMO_SCAN
    from .reader import read_scan

    layers = read_scan(str(DEMO_SCAN))
    layers[0][1]["name"] = "MNI152 T1 (2 mm)"
    return layers
