"""A synthetic scan with a known segmentation, for samples, tests and benchmarks."""

from __future__ import annotations

import numpy as np


def make_phantom(
    shape: tuple[int, ...] = (48, 96, 96), seed: int = 0, noise: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """An image and its labels: 0 background, 1 an ellipsoidal organ, 2 a lesion inside it.

    Works in 2D and 3D. Intensities are roughly CT-like after z-scoring: the organ is brighter
    than the background and the lesion darker than the organ, with Gaussian noise.
    """
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    centre = rng.uniform(-0.15, 0.15, len(shape))
    radii = rng.uniform(0.45, 0.7, len(shape))
    organ = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0
    lesion_centre = centre + rng.uniform(-0.2, 0.2, len(shape)) * radii
    lesion_radii = radii * rng.uniform(0.2, 0.35, len(shape))
    lesion = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, lesion_centre, lesion_radii, strict=True)) <= 1.0
    lesion &= organ
    labels = np.zeros(shape, np.uint8)
    labels[organ] = 1
    labels[lesion] = 2
    image = np.where(organ, 1.0, 0.0) - 0.6 * lesion + 0.1 * grid[-1]
    image = image + rng.normal(0.0, noise, shape)
    return image.astype(np.float32), labels
