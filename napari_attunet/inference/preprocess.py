"""From whatever array the user has to the (channels, *spatial) float32 the network takes.

Validation (one clear sentence per bad input), channel handling, normalization presets and
resampling to the training spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..models import REGISTRY, ModelSpec

# zscore: (x - mean) / std over the whole image, as MONAI's NormalizeIntensityd and the official
# code's NormalizeMedic; zscore_nonzero: NormalizeIntensityd(nonzero=True), zeros stay zero;
# range: ScaleIntensityRanged(a_min, a_max, b_min, b_max, clip); ct: a HU window onto [0, 1].
NORMALIZATION_MODES = ("none", "zscore", "zscore_nonzero", "zscore_foreground", "ct", "percentile", "range")
DEFAULT_CT_WINDOW = (-160.0, 240.0)  # abdominal soft tissue, in HU
DEFAULT_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Normalization:
    """An intensity preset: ``mode`` plus the window (HU) or percentiles it needs."""

    mode: str = "none"
    window: tuple[float, float] = DEFAULT_CT_WINDOW
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    target: tuple[float, float] = (0.0, 1.0)  # range: b_min, b_max
    clip: bool = True  # range: clip to the target

    @classmethod
    def parse(cls, value: str | dict | Normalization | None) -> Normalization:
        if isinstance(value, Normalization):
            return value
        if value is None:
            return cls()
        data = {"mode": value} if isinstance(value, str) else dict(value)
        mode = str(data.get("mode", "none")).lower().replace("-", "_")
        if mode not in NORMALIZATION_MODES:
            raise InputError(f"unknown normalization {mode!r}; use one of {', '.join(NORMALIZATION_MODES)}.")
        if mode == "range":
            data.setdefault("window", (data.get("a_min", 0.0), data.get("a_max", 1.0)))
            data.setdefault("target", (data.get("b_min", 0.0), data.get("b_max", 1.0)))
        window = _pair(data, "window", DEFAULT_CT_WINDOW)
        percentiles = _pair(data, "percentiles", DEFAULT_PERCENTILES)
        target = _pair(data, "target", (0.0, 1.0))
        if window[1] <= window[0] or percentiles[1] <= percentiles[0]:
            raise InputError(f"normalization {data}: the upper bound must exceed the lower.")
        return cls(mode, window, percentiles, target, bool(data.get("clip", True)))

    def to_dict(self) -> dict:
        out: dict = {"mode": self.mode}
        if self.mode == "ct":
            out["window"] = list(self.window)
        if self.mode == "percentile":
            out["percentiles"] = list(self.percentiles)
        if self.mode == "range":
            out.update(window=list(self.window), target=list(self.target), clip=self.clip)
        return out


def _pair(data: dict, key: str, default: tuple[float, float]) -> tuple[float, float]:
    values = tuple(float(v) for v in data.get(key, default))
    if len(values) != 2:
        raise InputError(f"normalization {data}: {key} takes two numbers, not {len(values)}.")
    return values[0], values[1]


def resolve_normalization(argument, spec: ModelSpec) -> Normalization:
    """The argument if given, else the checkpoint's metadata, else the family's usual preset."""
    if argument is not None:
        return Normalization.parse(argument)
    if spec.normalization:
        return Normalization.parse(spec.normalization)
    return Normalization.parse(REGISTRY[spec.family].normalization)


@dataclass(frozen=True)
class IntensityMap:
    """A normalization fitted to one image: ``y = x * gain + shift``, optionally clipped, on
    every voxel or (``nonzero_only``) on the voxels that are not zero."""

    gain: float = 1.0
    shift: float = 0.0
    clip: tuple[float, float] | None = None
    nonzero_only: bool = False

    def apply(self, x):
        """Apply in place to a float32 torch tensor (after any reorientation and resampling,
        where MONAI's pipelines normalize) and return it."""
        if self.nonzero_only:
            inside = x != 0
            x[inside] = x[inside] * self.gain + self.shift
        elif self.gain != 1.0 or self.shift != 0.0:
            x.mul_(self.gain).add_(self.shift)
        if self.clip is not None:
            x.clamp_(*self.clip)
        return x


def fit(channel: np.ndarray, norm: Normalization) -> IntensityMap:
    """The statistics ``norm`` needs, from the whole of one channel."""
    x = np.asarray(channel)
    if norm.mode == "none":
        return IntensityMap()
    if norm.mode in ("ct", "range", "percentile"):
        lo, hi = norm.window
        target = norm.target if norm.mode == "range" else (0.0, 1.0)
        if norm.mode == "percentile":
            lo, hi = (float(v) for v in np.percentile(_sample(x), norm.percentiles))
        gain = (target[1] - target[0]) / max(hi - lo, 1e-8)
        clip = (target[0], target[1]) if (norm.clip or norm.mode != "range") else None
        return IntensityMap(gain, target[0] - lo * gain, clip)
    values = x
    if norm.mode == "zscore_nonzero":
        values = x[x != 0]
    elif norm.mode == "zscore_foreground":
        values = x[x > _otsu(_sample(x))]
    if values.size == 0:
        values = x
    mean, std = _moments(values)
    if norm.mode == "zscore_nonzero" and std <= 0:
        std = np.float32(1.0)  # as MONAI: a constant foreground is only shifted
    gain = 1.0 / max(float(std), 1e-8)
    return IntensityMap(gain, -float(mean) * gain, None, norm.mode == "zscore_nonzero")


def normalize(channel: np.ndarray, norm: Normalization) -> np.ndarray:
    """One channel, normalized on its own grid, as float32; a constant image gives zeros."""
    import torch

    x = torch.from_numpy(np.array(channel, dtype=np.float32))
    return fit(channel, norm).apply(x).numpy()


def _moments(values: np.ndarray) -> tuple[np.float32, np.float32]:
    """Mean and population standard deviation over every voxel, accumulated in float64."""
    flat = values.reshape(-1)
    total = total_sq = 0.0
    for start in range(0, flat.size, 1 << 22):  # float64 chunks, not a float64 copy
        chunk = flat[start : start + (1 << 22)].astype(np.float64)
        total += chunk.sum()
        total_sq += np.dot(chunk, chunk)
    mean = total / max(flat.size, 1)
    std = np.sqrt(max(total_sq / max(flat.size, 1) - mean * mean, 0.0))
    return np.float32(mean), np.float32(std)


def _sample(x: np.ndarray, limit: int = 4_000_000) -> np.ndarray:
    """A strided subsample: statistics of a large scan do not need every voxel."""
    flat = x.reshape(-1)
    step = max(1, flat.size // limit)
    return flat[::step]


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values)) if values.min() < values.max() else float(values.min())


# ---- validation and channels ----------------------------------------------------------------


def _check_dtype(array: np.ndarray, name: str) -> None:
    if array.dtype == bool:
        raise InputError(f"{name} is a boolean mask, not an image; pick the scan layer instead.")
    if np.iscomplexobj(array):
        raise InputError(f"{name} has complex values; take its magnitude (np.abs) first.")
    if not (np.issubdtype(array.dtype, np.number)):
        raise InputError(f"{name} has dtype {array.dtype}, which is not numeric.")


def _check_finite(array: np.ndarray, name: str) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InputError(
                f"{name} has {bad} NaN or infinite voxels; replace them "
                "(e.g. with np.nan_to_num) before running."
            )


def prepare_channels(
    image, spec: ModelSpec, channel_axis: int | None = None, name: str = "the image"
) -> np.ndarray:
    """(C, *spatial) float32 with C == spec.in_channels. The input is never modified.

    ``image`` may be one array, or a list of arrays taken as channels. RGB(A) images (last axis 3
    or 4, 2D) are read as channels for 3-channel models.
    """
    if isinstance(image, (list, tuple)):
        arrays = [np.asarray(a) for a in image]
        if not arrays:
            raise InputError(
                f"{name}: the list of channel images is empty; pass the image, or one array per "
                f"channel ({spec.in_channels} for this model)."
            )
        for a in arrays:
            _check_dtype(a, name)
        if len({a.shape for a in arrays}) != 1:
            raise InputError(
                f"{name}: the channel images differ in shape ({', '.join(str(a.shape) for a in arrays)})."
            )
        stacked = np.stack([a.astype(np.float32, copy=False) for a in arrays])
        return _finish(stacked, spec, name)
    array = np.asarray(image)
    _check_dtype(array, name)
    if array.size == 0:
        raise InputError(f"{name} is empty (shape {array.shape}).")
    if (
        channel_axis is None
        and array.ndim == 3
        and array.shape[-1] in (3, 4)
        and spec.spatial_dims == 2
        and spec.in_channels in (3, 4)
    ):
        channel_axis = -1
    if channel_axis is not None:
        array = np.moveaxis(array, channel_axis, 0)
    else:
        array = array[None]
    if (
        array.shape[-1] in (3, 4)
        and array.ndim == 4
        and channel_axis is None
        and spec.in_channels == 1
        and min(array.shape[1:3]) > 4
    ):
        raise InputError(
            f"{name} looks like an RGB image (last axis {array.shape[-1]}), but the "
            "model takes one channel; convert it to greyscale first."
        )
    return _finish(array.astype(np.float32, copy=False), spec, name)


def _finish(array: np.ndarray, spec: ModelSpec, name: str) -> np.ndarray:
    spatial = array.shape[1:]
    if len(spatial) > 3:
        raise InputError(
            f"{name} has {len(spatial)} spatial axes {spatial}; the tool takes 2D "
            "images and 3D volumes (pick one time point or channel)."
        )
    if len(spatial) < 2:
        raise InputError(f"{name} has shape {array.shape[1:]}: not an image.")
    if int(np.prod(spatial)) <= 1:
        raise InputError(f"{name} has a single voxel; there is nothing to segment.")
    if len(spatial) == 2 and spec.spatial_dims == 3:
        raise InputError(
            f"{name} is 2D, but the checkpoint is a 3D model; open the volume it "
            "was made for, or use a 2D checkpoint."
        )
    if array.shape[0] != spec.in_channels:
        raise InputError(
            f"{name} has {array.shape[0]} channel(s), but the model takes "
            f"{spec.in_channels}; choose channel_axis or pass one array per channel."
        )
    _check_finite(array, name)
    return array


# ---- options checked before any copy is made --------------------------------------------------


def check_spacing(spacing: Sequence[float] | None, name: str) -> tuple[float, ...] | None:
    """Voxel sizes in mm, each finite and positive."""
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in np.ravel(np.asarray(spacing, dtype=object)))
    except (TypeError, ValueError):
        raise InputError(f"{name}: spacing {spacing!r} is not a list of numbers (mm per axis).") from None
    if not values or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(
            f"{name}: spacing {tuple(spacing)} must be positive millimetres per axis; "
            "fix the scan's header or pass the right spacing."
        )
    return values


def check_tile(tile, dims: int) -> tuple[int, ...] | None:
    """One size for every axis, or one per axis of the network; each positive."""
    if tile is None:
        return None
    sizes = (tile,) if isinstance(tile, (int, np.integer)) else tuple(tile)
    if len(sizes) == 1:
        sizes = sizes * dims
    if len(sizes) != dims or not all(isinstance(t, (int, np.integer)) and t > 0 for t in sizes):
        raise InputError(
            f"tile {tile!r}: give one positive size, or {dims} (one per axis of this {dims}D model)."
        )
    return tuple(int(t) for t in sizes)


def check_resampled_size(shape: Sequence[int], spacing, spec: ModelSpec, name: str) -> None:
    """Refuse, before resampling, a scan whose training-spacing grid cannot fit in memory."""
    from ..limits import refuse_over

    factors = resample_factors(spacing, spec, len(shape))
    if factors is None:
        return
    grid = resampled_shape(shape, factors)
    voxels = float(np.prod([float(n) for n in grid]))
    needed = voxels * 4 * (3 * spec.in_channels + 2 * spec.out_channels + 1)
    refuse_over(
        needed,
        f"{name}, resampled from {tuple(shape)} to {grid} voxels (the training "
        f"spacing {tuple(spec.spacing or ())} mm),",
        "check the scan's spacing, crop it, or use a checkpoint trained at a coarser spacing.",
        InputError,
    )


def spatial_shape(image, channel_axis: int | None) -> tuple[int, ...]:
    """The spatial shape of an image (one array, or a list of channel arrays), from shapes
    alone: no data is read."""
    if isinstance(image, (list, tuple)):
        return tuple(np.shape(image[0])) if image else ()
    shape = list(np.shape(image))
    if channel_axis is not None and shape:
        del shape[channel_axis]
    return tuple(shape)


# ---- resampling ------------------------------------------------------------------------------


def resample_factors(spacing: Sequence[float] | None, spec: ModelSpec, ndim: int) -> tuple[float, ...] | None:
    """Zoom factors from the scan grid to the training grid, or None when no change is needed."""
    if spacing is None or not spec.spacing:
        return None
    spacing = tuple(float(s) for s in spacing)[-ndim:]
    target = tuple(float(s) for s in spec.spacing)
    if len(target) == spec.spatial_dims and ndim == 3 and spec.spatial_dims == 2:
        target = (spacing[0],) + target  # slices keep their own spacing
    if len(target) != ndim or len(spacing) != ndim:
        return None
    factors = tuple(s / t for s, t in zip(spacing, target, strict=True))
    if all(abs(f - 1.0) < 0.01 for f in factors):
        return None
    return factors


def resampled_shape(shape: Sequence[int], factors: Sequence[float]) -> tuple[int, ...]:
    """The grid MONAI's ``Spacingd`` makes: voxel 0 stays, ``round((n - 1) * f) + 1`` voxels."""
    return tuple(max(1, int(np.round((n - 1) * f + 1))) for n, f in zip(shape, factors, strict=True))


@dataclass(frozen=True)
class GridWindow:
    """Where a crop lies on one axis of a larger run, before (``src``) and after (``dst``)
    resampling: its first voxel and the whole run's length on each grid, and how many voxels
    of the resampled grid it makes. A crop resampled through its window has exactly the voxels
    the whole run has there, so its tiles are the whole run's tiles."""

    src_start: int
    src_total: int
    dst_start: int
    dst_count: int
    dst_total: int


def resample(array, factors: Sequence[float], window: Sequence[GridWindow] | None = None):
    """A (C, *spatial) tensor on the training grid, as ``Spacingd`` resamples it.

    Output voxel j lies at input index ``j / f`` (f = scan spacing / training spacing), sampled
    linearly with the border value beyond the edge, one axis at a time (trilinear is separable).
    With ``window`` the array is a crop of a larger image and makes that image's output voxels
    ``dst_start ...`` (see ``GridWindow``).
    """
    shape = tuple(array.shape[1:])
    for axis, (n, f) in enumerate(zip(shape, factors, strict=True)):
        if window is not None:
            w = window[axis]
            if abs(f - 1.0) > 1e-9:
                positions = np.arange(w.dst_start, w.dst_start + w.dst_count) / f
                array = _interpolate_axis(array, 1 + axis, positions, w.src_total, w.src_start, n)
            continue
        m = resampled_shape((n,), (f,))[0]
        if m != n or abs(f - 1.0) > 1e-9:
            array = _interpolate_axis(array, 1 + axis, np.arange(m) / f, n)
    return array


def resample_back(
    array, factors: Sequence[float], shape: Sequence[int], window: Sequence[GridWindow] | None = None
):
    """The inverse of ``resample`` (as ``Invertd`` does it): back to the scan's ``shape``."""
    for axis, (n, f) in enumerate(zip(shape, factors, strict=True)):
        m = array.shape[1 + axis]
        if window is not None:
            w = window[axis]
            if abs(f - 1.0) > 1e-9:
                positions = np.arange(w.src_start, w.src_start + n) * f
                array = _interpolate_axis(array, 1 + axis, positions, w.dst_total, w.dst_start, m)
            continue
        if m != n or abs(f - 1.0) > 1e-9:
            array = _interpolate_axis(array, 1 + axis, np.arange(n) * f, m)
    return array


def _interpolate_axis(
    array, axis: int, positions: np.ndarray, size: int, start: int = 0, held: int | None = None
):
    """Linear interpolation along ``axis`` at ``positions`` on a grid of ``size`` voxels of
    which ``array`` holds ``held``, from voxel ``start`` on (the positions are clipped to the
    whole grid, then the neighbours taken from the part held: a crop interpolates as the
    whole would wherever it holds both neighbours)."""
    import torch

    held = size if held is None else held
    positions = np.clip(positions, 0, size - 1)
    low = np.floor(positions).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    weight = positions - low
    low, high = np.clip(low - start, 0, held - 1), np.clip(high - start, 0, held - 1)
    shape = [1] * array.dim()
    shape[axis] = len(positions)
    weight = torch.as_tensor(weight, dtype=array.dtype).view(shape)
    lo = array.index_select(axis, torch.from_numpy(low))
    hi = array.index_select(axis, torch.from_numpy(high))
    return lo + (hi - lo) * weight
