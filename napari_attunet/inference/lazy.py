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


def as_dask(image, name: str = "the image"):
    """A dask array over ``image`` (zarr, dask or numpy), reading nothing yet; a chunk that
    cannot be read is named (on whichever worker reads it)."""
    import dask.array as da

    if isinstance(image, da.Array):
        return image
    chunks = getattr(image, "chunks", None)
    if not (isinstance(chunks, tuple) and all(isinstance(c, int) for c in chunks)):
        chunks = "auto"
    if not isinstance(image, np.ndarray):
        image = Checked(image, name)
    return da.from_array(image, chunks=chunks, asarray=False, lock=False)


def stack_channels(images: Sequence, spec: ModelSpec, name: str = "the image"):
    """A list of channel images (numpy, dask or zarr arrays, one per channel) as one dask
    array (C, *spatial), reading nothing yet: what ``preprocess.prepare_channels`` makes of a
    list in memory, with the same checks and sentences."""
    import dask.array as da

    if not images:
        raise InputError(
            f"{name}: the list of channel images is empty; pass the image, or one array per "
            f"channel ({spec.in_channels} for this model)."
        )
    arrays = [a if hasattr(a, "shape") and hasattr(a, "dtype") else np.asarray(a) for a in images]
    for a in arrays:
        _check_dtype(np.empty(0, dtype=a.dtype), name)
    shapes = [tuple(int(n) for n in a.shape) for a in arrays]
    if len(set(shapes)) != 1:
        raise InputError(f"{name}: the channel images differ in shape ({', '.join(map(str, shapes))}).")
    return da.stack([as_dask(a, name) for a in arrays])


class Checked:
    """An array-like whose reads name the store and the chunk that cannot be read."""

    def __init__(self, image, name: str):
        self.image, self.name = image, name
        self.shape, self.dtype, self.ndim = image.shape, image.dtype, len(image.shape)
        self.chunks = getattr(image, "chunks", None)

    def __getitem__(self, index) -> np.ndarray:
        return checked_read(self.image, index, self.name)


def checked_read(image, index: tuple, name: str) -> np.ndarray:
    """``image[index]`` as numpy; a damaged chunk (bad compression, a truncated file) is one
    InputError naming the store and the chunk."""
    try:
        return np.asarray(image[index])
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - codecs raise anything: RuntimeError, ValueError...
        raise InputError(_unreadable(image, index, name, exc)) from None


def store_name(image, name: str) -> str:
    """The path of the store an array lives in, or ``name``."""
    root = getattr(getattr(image, "store", None), "root", None)
    path = getattr(image, "path", "") or ""
    return f"{root}/{path}".rstrip("/") if root is not None else name


def _unreadable(image, index: tuple, name: str, exc: Exception) -> str:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    reason = reason.split("] ", 1)[-1][:200]  # no "[Errno N]"
    where = store_name(image, name)
    chunk = _bad_chunk(image, index)
    part = f"its chunk {chunk}" if chunk else "a chunk of it"
    return (
        f"{where}: {part} cannot be read ({reason}); the store is damaged: copy or write it "
        "again from its source."
    )


def _bad_chunk(image, index: tuple) -> str | None:
    """The key of the first chunk under ``index`` that fails to read (a zarr array), or None."""
    chunks = getattr(image, "chunks", None)
    shape = getattr(image, "shape", None)
    if not (isinstance(chunks, tuple) and shape is not None and hasattr(image, "get_block_selection")):
        return None
    ranges = []
    for a, (n, c) in enumerate(zip(shape, chunks, strict=True)):
        sel = index[a] if a < len(index) else slice(None)
        if isinstance(sel, (int, np.integer)):
            lo = hi = int(sel) % n
        else:
            lo, hi, _ = sel.indices(n)
            hi = max(lo, hi - 1)
        ranges.append(range(lo // c, hi // c + 1))
    import itertools

    for coords in itertools.product(*ranges):
        try:
            image.get_block_selection(coords)
        except Exception:  # noqa: BLE001 - the one that fails is the one to name
            try:
                return str(image.metadata.encode_chunk_key(coords))
            except AttributeError:
                return ".".join(map(str, coords))
    return None


UNITS_MM = {"millimeter": 1.0, "micrometer": 1e-3, "nanometer": 1e-6, "centimeter": 10.0, "meter": 1e3}


def open_level(image, spacing, channel_axis: int | None, name: str):
    """An OME-Zarr group given as the image: (its first multiscale level, the full resolution;
    the level's spacing in mm when none is given; its channel axis when none is given). Any
    other image is returned as it is."""
    import sys

    zarr = sys.modules.get("zarr")
    if zarr is None or not isinstance(image, zarr.Group):
        return image, spacing, channel_axis
    where = store_name(image, name)
    attrs = dict(image.attrs)
    multiscales = attrs.get("multiscales") or dict(attrs.get("ome") or {}).get("multiscales")
    if not multiscales:
        arrays = sorted(k for k, _ in image.arrays())
        hint = f" (such as {where}/{arrays[0]})" if arrays else ""
        raise InputError(
            f"{where} is a zarr group without OME-Zarr multiscales metadata; pass one of its "
            f"arrays{hint} instead."
        )
    meta = multiscales[0]
    try:
        dataset = meta["datasets"][0]
        level = image[dataset["path"]]
    except (KeyError, IndexError, TypeError):
        raise InputError(
            f"{where}: its multiscales metadata names no level that is in the store; pass the "
            "array of its full-resolution level instead."
        ) from None
    if not hasattr(level, "shape"):
        raise InputError(
            f"{where}/{dataset['path']} is a group, not an array; pass the level's array instead."
        )
    axes = [a if isinstance(a, dict) else {"name": a} for a in meta.get("axes") or []]
    if len(axes) != len(level.shape):
        return level, spacing, channel_axis
    kinds = [a.get("type") for a in axes]
    if channel_axis is None and "channel" in kinds:
        channel_axis = kinds.index("channel")
    if spacing is None:
        scale = next(
            (
                t.get("scale")
                for t in dataset.get("coordinateTransformations", [])
                if t.get("type") == "scale"
            ),
            None,
        )
        space = [a for a, k in enumerate(kinds) if k == "space"]
        if scale is not None and len(scale) == len(axes) and space:
            factors = [UNITS_MM.get(str(axes[a].get("unit", "millimeter")), 1.0) for a in space]
            spacing = tuple(float(scale[a]) * f for a, f in zip(space, factors, strict=True))
    return level, spacing, channel_axis


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
        return checked_read(self.image, self.index(spatial, channel), self.name)

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
