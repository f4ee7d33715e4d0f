"""Images that are not held in memory (dask and zarr arrays): window reads, and the intensity
statistics of a normalization computed slab by slab, never on a copy of the whole volume.

The slabs run along the first spatial axis, so that the flat (C-order) voxel order of each
channel is preserved: the strided sample that percentile and Otsu statistics take is the very
sample the in-memory path takes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..models import ModelSpec
from .preprocess import (
    IntensityMap,
    Normalization,
    _check_dtype,
    _otsu,
    fit,
    resampled_shape,
)

SLAB_VOXELS = 1 << 24  # voxels per statistics read (64 MiB as float32)
SAMPLE_LIMIT = 4_000_000  # as preprocess._sample


def is_lazy(image) -> bool:
    """True for a dask array, a zarr array, or any array-like that is not numpy but has chunks."""
    if isinstance(image, np.ndarray) or isinstance(image, (list, tuple)):
        return False
    module = type(image).__module__.split(".")[0]
    return module in ("dask", "zarr") or (
        hasattr(image, "chunks") and hasattr(image, "shape") and hasattr(image, "dtype")
    )


def as_dask(image):
    """A dask array over ``image`` (zarr, dask or numpy), reading nothing yet."""
    import dask.array as da

    if isinstance(image, da.Array):
        return image
    chunks = getattr(image, "chunks", None)
    if not (isinstance(chunks, tuple) and all(isinstance(c, int) for c in chunks)):
        chunks = "auto"
    return da.from_array(image, chunks=chunks, asarray=False, lock=False)


class LazySource:
    """One lazy image as the network's channels: ``shape`` is (C, *spatial)."""

    def __init__(self, image, spec: ModelSpec, channel_axis: int | None, name: str):
        self.image, self.name = image, name
        shape = tuple(int(n) for n in image.shape)
        _check_dtype(np.empty(0, dtype=image.dtype), name)
        if int(np.prod(shape)) == 0:
            raise InputError(f"{name} is empty (shape {shape}).")
        if (
            channel_axis is None
            and len(shape) == 3
            and shape[-1] in (3, 4)
            and spec.spatial_dims == 2
            and spec.in_channels in (3, 4)
        ):
            channel_axis = -1
        self.channel_axis = None if channel_axis is None else channel_axis % len(shape)
        spatial = tuple(n for a, n in enumerate(shape) if a != self.channel_axis)
        channels = 1 if self.channel_axis is None else shape[self.channel_axis]
        if len(spatial) > 3:
            raise InputError(
                f"{name} has {len(spatial)} spatial axes {spatial}; the tool takes "
                "2D images and 3D volumes (pick one time point or channel)."
            )
        if len(spatial) < 2:
            raise InputError(f"{name} has shape {spatial}: not an image.")
        if len(spatial) == 2 and spec.spatial_dims == 3:
            raise InputError(
                f"{name} is 2D, but the checkpoint is a 3D model; open the volume "
                "it was made for, or use a 2D checkpoint."
            )
        if channels != spec.in_channels:
            raise InputError(
                f"{name} has {channels} channel(s), but the model takes "
                f"{spec.in_channels}; choose channel_axis or pass one array per "
                "channel."
            )
        self.spatial, self.channels = spatial, channels

    def index(self, spatial: Sequence[slice], channel: int | None = None) -> tuple:
        """The index into the original array for a spatial window (and one channel)."""
        index: list[slice | int] = list(spatial)
        if self.channel_axis is None:
            return tuple(index)
        index.insert(self.channel_axis, slice(None) if channel is None else channel)
        return tuple(index)

    def read(self, spatial: Sequence[slice], channel: int | None = None) -> np.ndarray:
        return np.asarray(self.image[self.index(spatial, channel)])

    def pieces(self, channel: int | None) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        """One channel as float32 pieces of about ``SLAB_VOXELS`` (whole chunks along the first
        two spatial axes, the rest whole), each with its start on those two axes."""
        n0, n1 = self.spatial[0], self.spatial[1]
        rest = int(np.prod(self.spatial[2:]))
        c0, c1 = self._chunk(0), self._chunk(1)
        depth = max(1, SLAB_VOXELS // max(n1 * rest, 1) // c0) * c0
        band = n1 if c0 * n1 * rest <= SLAB_VOXELS else max(1, SLAB_VOXELS // (c0 * rest) // c1) * c1
        tail = [slice(None)] * (len(self.spatial) - 2)
        for a0 in range(0, n0, depth):
            for a1 in range(0, n1, band):
                piece = self.read([slice(a0, a0 + depth), slice(a1, a1 + band)] + tail, channel)
                yield (a0, a1), piece.astype(np.float32, copy=False)

    def _chunk(self, axis: int) -> int:
        """The chunk length of the image along a spatial axis (1 when not chunked)."""
        chunks = getattr(self.image, "chunksize", None) or getattr(self.image, "chunks", None)
        if not (isinstance(chunks, tuple) and chunks and all(isinstance(c, int) for c in chunks)):
            return 1
        axes = [a for a in range(len(chunks)) if a != self.channel_axis]
        return max(1, int(chunks[axes[axis]]))


class ResampledSource:
    """A lazy image as the network sees it after resampling (``factors`` and ``flipped`` per
    scan axis, as ``preprocess.resample`` does it after the layout), for its statistics: the
    in-memory engine normalizes the resampled voxels. Pieces are whole planes of the first
    axis, each interpolated from the few scan planes around it."""

    def __init__(
        self,
        source: LazySource | HeldChannel,
        factors: Sequence[float],
        flipped: Sequence[bool],
        order: Sequence[int] | None = None,
    ):
        self.source, self.name = source, source.name
        self.channels, self.channel_axis = source.channels, source.channel_axis
        self.factors, self.flipped = tuple(factors), tuple(flipped)
        # the scan axes in the order the engine interpolates them (the network's axis order):
        # the same order gives the same float32 values, and the same exact zeros
        self.order = tuple(order) if order is not None else tuple(range(len(self.factors)))
        self.spatial = resampled_shape(source.spatial, self.factors)

    def _neighbours(self, axis: int, count: int, first: int = 0):
        """(scan index below, scan index above, weight) of resampled voxels ``first ...`` on an
        axis, computed as ``preprocess.resample`` computes them on the laid-out (flipped) axis,
        so that the same voxels come out exactly zero (``zscore_nonzero`` counts them)."""
        n, f = self.source.spatial[axis], self.factors[axis]
        positions = np.clip(np.arange(first, first + count) / f, 0, n - 1)
        low = np.floor(positions).astype(np.int64)
        high = np.minimum(low + 1, n - 1)
        weight = positions - low
        if self.flipped[axis]:
            low, high = n - 1 - low, n - 1 - high
        return low, high, weight

    def pieces(self, channel: int | None) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        scan, out = self.source.spatial, self.spatial
        depth = max(1, SLAB_VOXELS // max(int(np.prod(out[1:])), 1))
        rest = [slice(None)] * (len(scan) - 1)
        for first in range(0, out[0], depth):
            count = min(depth, out[0] - first)
            if abs(self.factors[0] - 1.0) <= 1e-9:
                rows = np.arange(first, first + count)
                low = high = (scan[0] - 1 - rows) if self.flipped[0] else rows
                weight = np.zeros(count)
            else:
                low, high, weight = self._neighbours(0, count, first)
            start, stop = int(min(low.min(), high.min())), int(max(low.max(), high.max())) + 1
            piece = self.source.read([slice(start, stop)] + rest, channel).astype(np.float32)
            for axis in self.order:
                if axis == 0:
                    piece = _blend(piece, 0, low - start, high - start, weight)
                elif abs(self.factors[axis] - 1.0) > 1e-9:
                    piece = _blend(piece, axis, *self._neighbours(axis, out[axis]))
            yield (first, 0), piece


def _blend(array: np.ndarray, axis: int, low, high, weight) -> np.ndarray:
    """``lo + (hi - lo) * w`` along ``axis`` in float32, as ``preprocess._interpolate_axis``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(array))
    shape = [1] * x.dim()
    shape[axis] = len(weight)
    w = torch.as_tensor(weight, dtype=x.dtype).view(shape)
    lo = x.index_select(axis, torch.from_numpy(np.asarray(low, np.int64)))
    hi = x.index_select(axis, torch.from_numpy(np.asarray(high, np.int64)))
    return (lo + (hi - lo) * w).numpy()


class HeldChannel:
    """One channel held in memory, with the reads ``ResampledSource`` makes of a lazy source."""

    channels, channel_axis = 1, None

    def __init__(self, array: np.ndarray, name: str):
        self.array, self.name, self.spatial = array, name, tuple(array.shape)

    def read(self, spatial: Sequence[slice], channel: int | None = None) -> np.ndarray:
        return np.asarray(self.array[tuple(spatial)])


def as_seen(source: LazySource, axes, order: Sequence[int]) -> LazySource | ResampledSource:
    """The source whose statistics the whole run takes: its resampled voxels when the run
    resamples (``axes``: a ``windows.AxisWindows`` per scan axis; ``order``: the scan axes in
    the network's order)."""
    if all(abs(ax.factor - 1.0) <= 1e-9 for ax in axes):
        return source
    return ResampledSource(source, [ax.factor for ax in axes], [ax.flipped for ax in axes], order)


def fit_as_seen(channels, axes, order: Sequence[int], norm: Normalization, name: str) -> list[IntensityMap]:
    """Per channel held in memory, the IntensityMap the whole run fits (see ``as_seen``)."""
    if all(abs(ax.factor - 1.0) <= 1e-9 for ax in axes):
        return [fit(c, norm) for c in channels]
    factors, flipped = [ax.factor for ax in axes], [ax.flipped for ax in axes]
    return [
        _fit_channel(ResampledSource(HeldChannel(c, name), factors, flipped, order), None, norm)
        for c in channels
    ]


def fit_lazy(source: LazySource | ResampledSource, norm: Normalization) -> list[IntensityMap]:
    """The per-channel IntensityMap ``preprocess.fit`` would give on the whole array."""
    return [
        _fit_channel(source, c if source.channel_axis is not None else None, norm)
        for c in range(source.channels)
    ]


def _fit_channel(
    source: LazySource | ResampledSource, channel: int | None, norm: Normalization
) -> IntensityMap:
    if norm.mode in ("none", "ct", "range"):
        return fit(np.zeros(1, np.float32), norm)  # these need no statistics
    size = int(np.prod(source.spatial))
    if norm.mode == "percentile":
        sample = _sample(source, channel, size)
        lo, hi = (float(v) for v in np.percentile(sample, norm.percentiles))
        gain = 1.0 / max(hi - lo, 1e-8)
        return IntensityMap(gain, -lo * gain, (0.0, 1.0))
    keep = None
    if norm.mode == "zscore_nonzero":

        def keep(x):
            return x != 0
    elif norm.mode == "zscore_foreground":
        level = _otsu(_sample(source, channel, size))

        def keep(x):
            return x > level

    count, mean, std = _moments(source, channel, keep)
    if count == 0:
        count, mean, std = _moments(source, channel, None)
    if norm.mode == "zscore_nonzero" and std <= 0:
        std = np.float32(1.0)
    gain = 1.0 / max(float(std), 1e-8)
    return IntensityMap(gain, -float(mean) * gain, None, norm.mode == "zscore_nonzero")


def _moments(source: LazySource | ResampledSource, channel, keep) -> tuple[int, np.float32, np.float32]:
    """Count, mean and population std in float64 accumulators, one slab at a time."""
    count, total, total_sq = 0, 0.0, 0.0
    for _, slab in source.pieces(channel):
        if np.issubdtype(slab.dtype, np.floating) and not np.isfinite(slab).all():
            bad = int(slab.size - np.count_nonzero(np.isfinite(slab)))
            raise InputError(
                f"{source.name} has NaN or infinite voxels ({bad} in one slab); "
                "replace them (e.g. with np.nan_to_num) before running."
            )
        values = slab[keep(slab)] if keep is not None else slab.reshape(-1)
        values = values.astype(np.float64)
        count += values.size
        total += values.sum()
        total_sq += np.dot(values, values)
    mean = total / max(count, 1)
    std = np.sqrt(max(total_sq / max(count, 1) - mean * mean, 0.0))
    return count, np.float32(mean), np.float32(std)


def _sample(source: LazySource | ResampledSource, channel, size: int) -> np.ndarray:
    """The voxels of ``flat[::step]`` of the whole channel (the in-memory sample; its order does
    not matter to percentiles and Otsu), gathered piece by piece."""
    step = max(1, size // SAMPLE_LIMIT)
    n1 = source.spatial[1]
    rest = int(np.prod(source.spatial[2:]))
    pieces = []
    for (a0, a1), piece in source.pieces(channel):
        flat = piece.reshape(-1)
        if piece.shape[1] == n1:  # whole rows of axis 1: contiguous in the flat order
            pieces.append(flat[(-(a0 * n1 * rest)) % step :: step].copy())
            continue
        rows = (
            np.arange(a0, a0 + piece.shape[0])[:, None] * n1 + np.arange(a1, a1 + piece.shape[1])
        ).reshape(-1)
        first = (-(rows * rest)) % step  # the first sampled voxel of each row
        x = first[:, None] + np.arange(-(-rest // step) + 1)[None, :] * step
        keep = x < rest
        pieces.append(flat[(np.arange(rows.size)[:, None] * rest + x)[keep]])
    return np.concatenate(pieces)
