"""Surface distances between two label maps, as MONAI measures them, without a distance
transform of the volume.

MONAI (``get_mask_edges`` / ``get_surface_distance``) takes a class's *edge* as the voxels of the
mask that binary erosion (6-neighbourhood in 3D, 4 in 2D, outside the image counted as
background) removes, and the distance of an edge voxel as the exact Euclidean distance, in mm,
to the nearest edge voxel of the other mask. Here:

- the edges of every class come from one pass over each label map: a voxel is an edge of its
  class when a face neighbour holds another value or lies outside the image, which is exactly
  what the erosion of that class's mask removes;
- the distance of an edge voxel is found by trying voxel offsets in order of their length in mm,
  within a small ball: the first offset that lands on an edge voxel of the same class gives the
  exact distance, since every shorter offset was tried. The few edge voxels with nothing inside
  the ball (outliers) go to a KD-tree over the other edge's voxels, as MONAI does for all of
  them. A good segmentation resolves most of its edge within a voxel or two, so the volume is
  never transformed and the tree is small work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BALL_OFFSETS = 150  # about how many voxel offsets the exact search tries before the KD-tree


@dataclass
class Edges:
    """The edge voxels of every class of one label map, on a padded grid.

    ``labels`` is the padded map flattened, holding the class value on edge voxels and
    ``sentinel`` elsewhere (interior, background, padding); ``points`` maps a class value to
    the flat indices of its edge voxels.
    """

    labels: np.ndarray
    points: dict[int, np.ndarray]
    shape: tuple[int, ...]
    sentinel: int


def ball(spacing: Sequence[float], target: int = BALL_OFFSETS) -> tuple[np.ndarray, np.ndarray, float]:
    """Voxel offsets within a ball (in mm) of about ``target`` offsets, sorted by length: (offsets,
    lengths in mm, radius in mm). The ball holds every offset up to its radius."""
    s = np.asarray(spacing, dtype=np.float64)
    unit = math.pi ** (len(s) / 2) / math.gamma(len(s) / 2 + 1)  # volume of the unit ball
    radius = max(float(s.min()), (target * float(np.prod(s)) / unit) ** (1.0 / len(s)))
    reach = np.floor(radius / s + 1e-9).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-n, n + 1) for n in reach], indexing="ij"), -1)
    grid = grid.reshape(-1, len(s))
    lengths = np.sqrt(((grid * s) ** 2).sum(1))
    keep = lengths <= radius
    order = np.argsort(lengths[keep], kind="stable")
    return grid[keep][order], lengths[keep][order], radius


def pad_width(spacing: Sequence[float], target: int = BALL_OFFSETS) -> tuple[int, ...]:
    """Voxels of padding per axis so that every offset of the ball stays inside the padded grid."""
    offsets, _, _ = ball(spacing, target)
    return tuple(int(v) + 1 for v in np.abs(offsets).max(0))


def edges(labels: np.ndarray, pad: Sequence[int], sentinel: int) -> Edges:
    """The edge voxels of every non-zero class of ``labels``; ``sentinel`` is a value that no
    class holds (the padding), which also marks the image border as an edge."""
    padded = np.pad(labels, [(p, p) for p in pad], constant_values=sentinel)
    boundary = np.zeros(padded.shape, dtype=bool)
    for axis in range(padded.ndim):
        head = [slice(None)] * padded.ndim
        tail = list(head)
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        differs = padded[tuple(head)] != padded[tuple(tail)]
        boundary[tuple(head)] |= differs
        boundary[tuple(tail)] |= differs
    boundary &= padded != 0
    boundary &= padded != sentinel
    flat = padded.reshape(-1)
    index = np.flatnonzero(boundary.reshape(-1))
    values = flat[index]
    order = np.argsort(values, kind="stable")
    index, values = index[order], values[order]
    classes, starts = np.unique(values, return_index=True)
    ends = list(starts[1:]) + [len(values)] if len(starts) else []
    points = {int(c): index[a:b] for c, a, b in zip(classes, starts, ends, strict=True)}
    return Edges(np.where(boundary, padded, sentinel).reshape(-1), points, padded.shape, sentinel)


def _strides(shape: Sequence[int]) -> np.ndarray:
    return np.array([int(np.prod(shape[a + 1 :])) for a in range(len(shape))], dtype=np.int64)


def directed(
    source: Edges, target: Edges, value: int, spacing: Sequence[float], target_offsets: int = BALL_OFFSETS
) -> np.ndarray:
    """Distance in mm from each edge voxel of class ``value`` in ``source`` to the nearest edge
    voxel of that class in ``target`` (both on the same padded grid): MONAI's
    ``get_surface_distance(edges_source, edges_target, spacing=spacing)``. Infinite where the
    target has no edge of that class, as MONAI's."""
    start = source.points.get(value, np.zeros(0, np.int64))
    goal = target.points.get(value)
    if goal is None or not len(goal):
        return np.full(len(start), np.inf)
    offsets, lengths, _ = ball(spacing, target_offsets)
    steps = offsets @ _strides(source.shape)
    out = np.empty(len(start), dtype=np.float64)
    todo = np.arange(len(start))
    current = start
    labels = target.labels
    for step, length in zip(steps, lengths, strict=True):
        if not len(current):
            break
        hit = labels[current + step] == value
        if hit.any():
            out[todo[hit]] = length
            miss = ~hit
            todo, current = todo[miss], current[miss]
    if len(current):
        out[todo] = _tree_distances(current, goal, source.shape, spacing)
    return out


def _tree_distances(
    queries: np.ndarray, points: np.ndarray, shape: Sequence[int], spacing: Sequence[float]
) -> np.ndarray:
    from scipy.spatial import cKDTree

    scale = np.asarray(spacing, dtype=np.float64)
    where = np.stack(np.unravel_index(points, tuple(shape)), -1) * scale
    ask = np.stack(np.unravel_index(queries, tuple(shape)), -1) * scale
    tree = cKDTree(where, leafsize=32, balanced_tree=False, compact_nodes=False)
    return tree.query(ask, k=1, workers=-1)[0]


def hd95(forward: np.ndarray, backward: np.ndarray) -> float:
    """MONAI's ``compute_hausdorff_distance(percentile=95, directed=False)``: the larger of the
    two directed 95th percentiles (linear interpolation, as ``torch.quantile``)."""
    if not len(forward) or not len(backward) or np.isinf(forward).any() or np.isinf(backward).any():
        return math.nan
    return float(max(np.quantile(forward, 0.95), np.quantile(backward, 0.95)))


def assd(forward: np.ndarray, backward: np.ndarray) -> float:
    """MONAI's ``compute_average_surface_distance(symmetric=True)``: the mean over both
    directions' distances together (not the mean of the two means)."""
    if not len(forward) or not len(backward) or np.isinf(forward).any() or np.isinf(backward).any():
        return math.nan
    return float((forward.sum() + backward.sum()) / (len(forward) + len(backward)))
