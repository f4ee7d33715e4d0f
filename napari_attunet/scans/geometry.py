"""World geometry of scans and layers, in this tool's one convention.

Arrays are in napari's axis order, (z, y, x) for volumes and (y, x) for images. World
coordinates are millimetres in the patient's LPS frame, in the same reversed order: world axis 0
points to Superior, 1 to Posterior, 2 to Left. An *affine* is the (n + 1) x (n + 1) matrix that
maps an array index to that world point, so ``world = affine @ (index, 1)``.

Orientation codes name, for each array axis, the patient direction its index grows toward
("RAS": axis 0 toward Right, 1 toward Anterior, 2 toward Superior), as nibabel's ``aff2axcodes``,
MONAI's ``Orientationd`` and ITK's ``DICOMOrient`` do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# World axis k (napari order) points toward POSITIVE[k]; its opposite is NEGATIVE[k].
POSITIVE = {3: "SPL", 2: "PL"}
NEGATIVE = {3: "IAR", 2: "AR"}
OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}
AXIS_OF = {"L": "LR", "R": "LR", "P": "PA", "A": "PA", "S": "SI", "I": "SI"}


def compose(
    spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray | None = None
) -> np.ndarray:
    """The affine of a grid: ``origin + direction @ (spacing * index)``."""
    n = len(spacing)
    rotation = np.eye(n) if direction is None else np.asarray(direction, dtype=float)
    out = np.eye(n + 1)
    out[:n, :n] = rotation * np.asarray(spacing, dtype=float)[None, :]
    out[:n, n] = np.asarray(origin, dtype=float)
    return out


def decompose(
    affine: np.ndarray, tolerance: float = 1e-4
) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    """(spacing, origin, direction) of an affine without shear.

    Raises ValueError when the columns are not orthogonal (a sheared grid), which a scan file's
    direction cosines cannot hold.
    """
    affine = np.asarray(affine, dtype=float)
    n = affine.shape[0] - 1
    linear = affine[:n, :n]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("the transform collapses an axis (zero voxel size)")
    direction = linear / spacing[None, :]
    gram = direction.T @ direction
    if np.abs(gram - np.eye(n)).max() > tolerance:
        raise ValueError("the transform shears the grid; its axes are not orthogonal")
    return tuple(float(s) for s in spacing), tuple(float(o) for o in affine[:n, n]), direction


def nearest_rotation(direction: np.ndarray) -> np.ndarray:
    """The orthonormal matrix nearest to ``direction`` (polar decomposition)."""
    u, _, vt = np.linalg.svd(np.asarray(direction, dtype=float))
    return u @ vt


def orientation(affine: np.ndarray) -> str:
    """The orientation code of an affine's array axes (the dominant direction of each)."""
    affine = np.asarray(affine, dtype=float)
    n = affine.shape[0] - 1
    linear = affine[:n, :n] / np.linalg.norm(affine[:n, :n], axis=0)[None, :]
    used: set[int] = set()
    codes = [""] * n
    # Greedy on the largest cosine first, so that a 45-degree tie cannot pick one world axis twice.
    for flat in np.argsort(-np.abs(linear), axis=None):
        world, axis = divmod(int(flat), n)
        if codes[axis] or world in used:
            continue
        used.add(world)
        codes[axis] = (POSITIVE[n] if linear[world, axis] > 0 else NEGATIVE[n])[world]
    return "".join(codes)


def reorientation(source: str, target: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(permutation, flipped axes) taking an array in ``source`` orientation to ``target``.

    The result array is ``np.flip(np.transpose(a, permutation), flipped)``: its axis ``i`` is the
    source axis ``permutation[i]``, reversed when ``i`` is in ``flipped``.
    """
    source, target = source.upper(), target.upper()
    if len(source) != len(target) or sorted(map(AXIS_OF.get, source)) != sorted(map(AXIS_OF.get, target)):
        raise ValueError(f"cannot reorient {source!r} to {target!r}: they name other axes")
    permutation, flipped = [], []
    for i, code in enumerate(target):
        j = next(k for k, c in enumerate(source) if AXIS_OF[c] == AXIS_OF[code])
        permutation.append(j)
        if source[j] != code:
            flipped.append(i)
    return tuple(permutation), tuple(flipped)


def is_valid_code(code: str, ndim: int) -> bool:
    code = code.upper()
    return len(code) == ndim and all(c in AXIS_OF for c in code) and len({AXIS_OF[c] for c in code}) == ndim


def rotation_about_origin(affine: np.ndarray) -> np.ndarray | None:
    """napari's ``affine`` for a grid shown with ``scale`` = spacing and ``translate`` = origin.

    The residual rotation is applied about the origin, so that layers derived on other grids
    (gate maps, crops) keep using plain ``scale``/``translate`` and land right. None when the
    grid is axis-aligned.
    """
    spacing, origin, direction = decompose(affine)
    if np.allclose(direction, np.eye(len(spacing)), atol=1e-9):
        return None
    n = len(spacing)
    out = np.eye(n + 1)
    out[:n, :n] = direction
    out[:n, n] = np.asarray(origin) - direction @ np.asarray(origin)
    return out
