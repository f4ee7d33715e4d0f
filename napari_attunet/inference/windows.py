"""The whole run's sliding windows along each scan axis, and the part of the image that any part
of it needs: the context of a block of a blockwise run, or of a Preview region.

A part is predicted as the whole run predicts it when its crop holds exactly the windows of the
whole run that reach into it, laid on the whole run's grids: the crop starts on one of those
windows, ends on one or at the image's end, and (with resampling) makes the whole run's
resampled voxels there (``preprocess.GridWindow``). Its windows are then the whole run's, its
gate grids line up with the whole run's, and inside the part the result is the whole run's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..models import ModelSpec
from .preprocess import GridWindow, resample_factors, resampled_shape
from .tiling import default_tile, round_up, starts


@dataclass(frozen=True)
class AxisWindows:
    """The whole run's windows along one scan axis (tile None: a slice axis). ``starts`` and
    ``net_tile`` are on the network's grid (after flipping and resampling, of ``net_size``
    voxels); ``tile``, ``step`` and ``stride`` are their lengths in scan voxels (rounded)."""

    tile: int | None = None
    step: int = 1
    stride: int = 1
    flipped: bool = False
    factor: float = 1.0
    net_tile: int = 0
    net_size: int = 0
    starts: tuple[int, ...] = ()


@dataclass(frozen=True)
class RunWindows:
    """Every axis' windows of one whole run over an image of ``spatial`` scan voxels."""

    spatial: tuple[int, ...]
    tile: tuple[int, ...]  # on the network's plane axes
    axes: tuple[AxisWindows, ...]  # per scan axis
    perm: tuple[int, ...]  # network axis i is scan axis perm[i]
    factors: tuple[float, ...] | None  # resampling, on the network's axes
    plane: tuple[int, ...]  # the network's plane, resampled
    stack: bool  # a 2D network over the slices of a volume


@dataclass(frozen=True)
class Part:
    """A part of the image: ``region`` (slices it keeps), ``outer`` (what it reads) and
    ``inner`` (the region within ``outer``); with resampling, ``grid`` places ``outer`` on the
    whole run's grids (a GridWindow per network axis)."""

    region: tuple[slice, ...]
    outer: tuple[slice, ...]
    inner: tuple[slice, ...]
    grid: tuple[GridWindow, ...] | None = None


def run_windows(
    spatial: Sequence[int], spec: ModelSpec, *, tile=None, overlap: float = 0.5, spacing=None, layout=None
) -> RunWindows:
    """The windows the in-memory engine runs over a whole image of this shape (see
    ``plan._plan_tiles``), per scan axis."""
    dims = spec.spatial_dims
    spatial = tuple(int(n) for n in spatial)
    perm = tuple(range(len(spatial))) if layout is None or layout.identity else tuple(layout.permutation)
    factors = resample_factors(spacing, spec, len(spatial))
    if factors is not None:
        factors = tuple(factors[p] for p in perm)
    net_shape = tuple(spatial[p] for p in perm)
    work = resampled_shape(net_shape, factors) if factors is not None else net_shape
    plane = tuple(work[-dims:])
    stride = spec.total_stride
    if isinstance(tile, int):
        tile = (tile,) * dims
    elif tile is not None and len(tile) == 1:  # `--tile 128`: every axis
        tile = tuple(tile) * dims
    padded = tuple(round_up(n, s) for n, s in zip(plane, stride, strict=True))
    tile_ = default_tile(padded, stride, dims, tile or spec.tile)
    flipped = set(layout.flipped) if layout is not None and not layout.identity else set()
    axes = [AxisWindows(flipped=perm.index(a) in flipped) for a in range(len(spatial))]
    lead = len(spatial) - dims
    for i in range(dims):
        net = lead + i
        f = factors[net] if factors is not None else 1.0
        t, s, size = tile_[i], stride[i], plane[i]
        w = max(s, int(t * (1.0 - overlap)) // s * s)  # as tiling.starts
        axes[perm[net]] = AxisWindows(
            max(1, math.ceil(t / f)),
            max(1, round(w / f)),
            max(1, round(s / f)),
            net in flipped,
            f,
            t,
            size,
            tuple(starts(round_up(size, s), t, s, overlap)),
        )
    stack = len(spatial) == 3 and dims == 2
    return RunWindows(spatial, tile_, tuple(axes), perm, factors, plane, stack)


def axis_context(region: slice, n: int, ax: AxisWindows) -> tuple[slice, GridWindow]:
    """The part of an axis a region reads, and where it lies on the whole run's grids: every
    window of the whole run that touches the network voxels the region is resampled from,
    and the scan voxels those windows are resampled from."""
    a, b = (n - region.stop, n - region.start) if ax.flipped else (region.start, region.stop)
    if ax.tile is None:
        return region, GridWindow(a, n, a, b - a, n)
    f, size, t = ax.factor, ax.net_size, ax.net_tile
    if f == 1.0:
        lo, hi = a, b
    else:  # the network voxels that scan voxels a..b-1 are interpolated from, and the gate
        # cells kept with the region: those centred in it, at [a, b) on the laid-out axis, or
        # (a - 1, b - 1] where it is flipped. A window holds a cell's centre (windows and
        # cells start on multiples of the gate's stride), so the windows touching that span
        # are those of its cells.
        low = (a - 1) * f if ax.flipped else a * f  # the lowest centre kept (exclusive if flipped)
        beyond = int(np.floor((b - 1) * f)) + 1 if ax.flipped else math.ceil(b * f - 1e-9)
        lo = max(0, min(size - 1, int(np.floor(min(a * f, low)))))
        hi = min(size, max(int(np.floor((b - 1) * f)) + 2, beyond))
    touching = [s for s in ax.starts if s < hi and s + t > lo]
    first, last = min(touching), min(size, max(touching) + t)
    if f == 1.0:
        src = (first, last)
    else:  # the scan voxels those network voxels are interpolated from
        src = (int(np.floor(first / f)), min(n, int(np.floor((last - 1) / f)) + 2))
    outer = slice(n - src[1], n - src[0]) if ax.flipped else slice(*src)
    return outer, GridWindow(src[0], n, first, last - first, size)


def part(run: RunWindows, region: Sequence[slice]) -> Part:
    """The context of ``region`` (one slice per scan axis, steps of 1) in ``run``."""
    if len(region) != len(run.spatial):
        raise InputError(f"region has {len(region)} axes, the image {len(run.spatial)}.")
    region = tuple(slice(*r.indices(n)[:2]) for r, n in zip(region, run.spatial, strict=True))
    if any(r.stop <= r.start for r in region):
        raise InputError(f"region {tuple(region)} is empty for an image of shape {run.spatial}.")
    found = [axis_context(r, n, ax) for r, n, ax in zip(region, run.spatial, run.axes, strict=True)]
    outer = tuple(o for o, _ in found)
    inner = tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, outer, strict=True))
    grid = tuple(found[p][1] for p in run.perm) if run.factors is not None else None
    return Part(region, outer, inner, grid)


def windows_in(grid: GridWindow, ax: AxisWindows) -> int:
    """The whole run's windows inside a part's crop along one axis (the windows it runs)."""
    end = grid.dst_start + grid.dst_count
    return sum(1 for s in ax.starts if s >= grid.dst_start and min(s + ax.net_tile, grid.dst_total) <= end)
