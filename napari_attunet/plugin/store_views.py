"""Lazy, read-only views of a result store's arrays for napari layers.

napari reads a layer's data by slicing it; these views read only that slice from the zarr array
on each call (nothing is cached), so ``layer.refresh()`` shows what the run has written since.
Plain zarr arrays (not dask) for the same reason: napari's dask cache would keep stale chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _key(key, ndim: int) -> tuple:
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (ndim - len(key) + 1) + key[at + 1 :]
    return key


class StoreView:
    """``array[lead]`` (e.g. one gate head), optionally times ``factor`` as float32."""

    def __init__(self, array, lead: tuple = (), factor: float | None = None):
        self.array, self.lead, self.factor = array, tuple(lead), factor
        self.shape = tuple(array.shape[len(self.lead) :])
        self.dtype = np.dtype(np.float32) if factor is not None else np.dtype(array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        values = np.asarray(self.array[self.lead + _key(key, self.ndim)])
        if self.factor is not None:
            return values.astype(np.float32) * np.float32(self.factor)
        return values

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self[(slice(None),) * self.ndim]
        return values if dtype is None else values.astype(dtype)


class ThresholdView(StoreView):
    """Labels from the stored uint8 probabilities under ``thresholds``, slice by slice."""

    def __init__(self, probabilities, output: str, thresholds: Sequence[float] | None):
        super().__init__(probabilities)
        self.output, self.thresholds = output, thresholds
        self.shape = tuple(probabilities.shape[1:])
        channels = probabilities.shape[0] + (1 if output == "sigmoid" else 0)
        self.dtype = np.dtype(np.uint8 if channels < 255 else np.int16)

    def __getitem__(self, key) -> np.ndarray:
        from ..inference.postprocess import threshold_labels

        q = np.asarray(self.array[(slice(None),) + _key(key, self.ndim)])
        return threshold_labels(q, self.output, self.thresholds)


def slabs(shape: Sequence[int], chunks: Sequence[int] | None):
    """Slices along the first axis, one chunk row at a time (a few chunks in memory)."""
    step = int(chunks[0]) if chunks else max(1, shape[0] // 16)
    for start in range(0, shape[0], step):
        yield slice(start, min(start + step, shape[0]))


def uncertainty_counts(labels, uncertainty, n_labels: int, chunks=None, cancel=None) -> np.ndarray:
    """(n_labels, 256) voxel counts by label value and stored uncertainty level (q = 0..255),
    read slab by slab: any "uncertain over" level's volumes follow without another read."""
    counts = np.zeros((n_labels, 256), np.int64)
    for rows in slabs(labels.shape, chunks):
        if cancel is not None and cancel():
            break
        lab = np.asarray(labels[rows]).reshape(-1).astype(np.int64)
        unc = np.asarray(uncertainty[rows]).reshape(-1).astype(np.int64)
        keep = lab < n_labels
        counts += np.bincount(lab[keep] * 256 + unc[keep], minlength=n_labels * 256).reshape(n_labels, 256)
    return counts


def volumes_from_counts(
    counts: np.ndarray, spacing: Sequence[float], level: float | None = None
) -> np.ndarray:
    """Per-label volume in mL (voxel volume from ``spacing`` in mm), of all voxels or of those
    whose uncertainty is over ``level``."""
    voxel = float(np.prod(spacing)) / 1000.0
    if level is None:
        return counts.sum(axis=1) * voxel
    over = np.arange(256) / 255.0 > level
    return counts[:, over].sum(axis=1) * voxel
