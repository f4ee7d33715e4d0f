"""The first stage of a run, in two steps: ``prepare_input`` (the input checked, laid out, resampled
and normalized for the network) and the tiles, batches and memory decided from its shape, with
the input padded to the total stride (``make_plan`` does both)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, fields

import numpy as np
import torch

from ..errors import InputError
from ..models import AttentionUNetBase, ModelSpec
from .lazy import fit_as_seen
from .memory import check_memory, check_shape_memory, estimate_memory
from .options import RunOptions
from .orientation import Layout, network_layout
from .preprocess import (
    GridWindow,
    check_resampled_size,
    fit,
    prepare_channels,
    resample,
    resample_factors,
    resampled_shape,
    resolve_normalization,
    spatial_shape,
)
from .progress import Progress
from .tiling import default_tile, round_up, window_grid
from .windows import part, run_windows


@dataclass
class NetworkInput:
    """One run's input, checked, laid out, resampled and normalized for the network: what its
    tiles are cut from, and the shapes the finish maps them back through."""

    x: torch.Tensor  # (C, *work_shape): normalized in place, not yet padded
    layout: Layout
    factors: tuple[float, ...] | None  # resampling, on the network's axes
    window: tuple[GridWindow, ...] | None  # a crop's place on a larger run's grids (``grid``)
    context: tuple[tuple[int, int], ...] | None  # the region inside ``x`` (with ``region``)
    scan_shape: tuple[int, ...]  # the input's spatial shape (the region's, with context)
    image_shape: tuple[int, ...]  # the same on the network's axes
    work_shape: tuple[int, ...]  # ... resampled
    stack: int  # slices of a volume run through a 2D model, else 1
    notes: list[str]


@dataclass
class Plan(NetworkInput):
    """The network input padded (``x`` is then (C, stack, *padded)), and the shapes and tiles
    that the run and its finish share."""

    plane: tuple[int, ...]  # the network's spatial axes of ``work_shape``
    padded: tuple[int, ...]  # ``plane`` padded to the total stride
    tile: tuple[int, ...]
    jobs: list[tuple[int, tuple[int, ...]]]  # (slice, window start) of every tile
    batch_size: int
    auto_batch: bool
    stitch_on_device: bool


@dataclass(frozen=True)
class Target:
    """Where and how the network runs."""

    dev: torch.device
    precision: str
    engine: str  # 'torch' or 'openvino'
    channels_last: bool


def make_plan(
    image,
    model: AttentionUNetBase,
    target: Target,
    options: RunOptions,
    *,
    intensity=None,
    grid=None,
) -> Generator[Progress, None, Plan]:
    """Checks, channels, layout, resampling and normalization; then tiles, batches, memory."""
    network_input = yield from prepare_input(image, model.spec, options, intensity=intensity, grid=grid)
    return _plan_tiles(network_input, model, target, options)


def prepare_input(
    image,
    spec: ModelSpec,
    options: RunOptions,
    *,
    intensity=None,
    grid=None,
) -> Generator[Progress, None, NetworkInput]:
    """The input checked, its channels taken, laid out for the network, resampled to the
    training spacing and normalized. ``grid`` (a GridWindow per network axis) says where the
    image lies on a larger run's grids, for a block of that run; ``intensity`` (an
    IntensityMap per channel) replaces the fit, for a part of a larger image."""
    spacing, name, region = options.spacing, options.name, options.region
    notes: list[str] = []
    check_shape_memory(image, spec, name)
    check_resampled_size(spatial_shape(image, options.channel_axis), spacing, spec, name)
    yield Progress("preparing", 0, 1, "normalizing")

    channels = prepare_channels(image, spec, options.channel_axis, name)
    norm = resolve_normalization(options.normalization, spec)
    ndim = np.ndim(channels[0])
    affine = options.affine
    if affine is not None and np.shape(affine) != (ndim + 1, ndim + 1):
        raise InputError(
            f"{name}: affine must be {ndim + 1}x{ndim + 1} for an image with "
            f"{ndim} spatial axes, not {np.shape(affine)}."
        )
    layout = network_layout(spec, ndim, affine, options.file_orientation, options.orientation)
    context = None
    if region is not None:
        # The whole run's windows that reach into the region, on its grids, and the whole
        # image's statistics: inside the region, the whole run's result.
        run = run_windows(
            np.shape(channels[0]),
            spec,
            tile=options.tile,
            overlap=options.overlap,
            spacing=spacing,
            layout=layout,
        )
        crop = part(run, region)
        if intensity is None:
            intensity = fit_as_seen(channels, run.axes, run.perm, norm, name)
        channels = np.stack([c[crop.outer] for c in channels])
        context = tuple((s.start, s.stop) for s in crop.inner)
        grid = crop.grid
    x = torch.from_numpy(np.array(channels, dtype=np.float32))  # a copy: normalized in place
    dims = spec.spatial_dims
    scan_shape = tuple(x.shape[1:])
    stack = scan_shape[0] if len(scan_shape) == 3 and dims == 2 else 1

    # From here on, spatial axes are laid out as the network was trained to see them.
    factors = resample_factors(spacing, spec, len(scan_shape))
    if not layout.identity:
        x = _to_network(x, layout)
        factors = None if factors is None else tuple(factors[p] for p in layout.permutation)
        notes.append(f"the network saw the scan {layout.description}")
    image_shape = tuple(x.shape[1:])
    window = None
    if factors is not None and grid is not None:
        window = tuple(grid)
        work_shape = tuple(w.dst_count for w in window)
        x = resample(x, factors, window)
        notes.append(f"resampled to the training spacing {tuple(spec.spacing or ())} mm")
    elif factors is not None:
        work_shape = resampled_shape(image_shape, factors)
        x = resample(x, factors)
        notes.append(
            f"resampled {image_shape} -> {work_shape} to the training spacing {tuple(spec.spacing or ())} mm"
        )
    else:
        work_shape = image_shape
    # After reorientation and resampling, where MONAI's pipelines normalize (clipping and
    # `nonzero` are decided on the voxels the network sees).
    for c in range(x.shape[0]):
        (intensity[c] if intensity else fit(x[c].numpy(), norm)).apply(x[c])
    return NetworkInput(
        x, layout, factors, window, context, scan_shape, image_shape, work_shape, stack, notes
    )


def _plan_tiles(p: NetworkInput, model: AttentionUNetBase, target: Target, options: RunOptions) -> Plan:
    """Tiles, batches and memory from the input's shape; ``x`` padded to the total stride."""
    spec, name = model.spec, options.name
    dims = spec.spatial_dims
    plane = p.work_shape[-dims:]
    padded = tuple(round_up(n, s) for n, s in zip(plane, spec.total_stride, strict=True))
    tile_, jobs, batch, auto_batch = _tiles(
        padded, spec, target.dev, options.tile, options.overlap, p.stack, options.batch_size
    )
    host, device_bytes = estimate_memory(model, padded, tile_, batch, p.stack, options.attention)
    stitch_on_device = check_memory(host, device_bytes, target.dev, name)
    if target.dev.type != "cpu" and not stitch_on_device:
        p.notes.append("stitching on the CPU: the GPU cannot hold the whole-image buffers")
    x = _pad(p.x, plane, padded)
    if x.dim() == 1 + dims:  # one leading axis for every run: a single image is a stack of one
        x = x.unsqueeze(1)
    input_fields = {f.name: getattr(p, f.name) for f in fields(NetworkInput)}
    return Plan(
        **input_fields | {"x": x},
        plane=plane,
        padded=padded,
        tile=tile_,
        jobs=jobs,
        batch_size=batch,
        auto_batch=auto_batch,
        stitch_on_device=stitch_on_device,
    )


def _tiles(
    padded, spec, dev: torch.device, tile, overlap: float, stack: int, batch_size: int | None
) -> tuple[tuple[int, ...], list, int, bool]:
    """The tile, every (slice, window start), the batch size and whether it was chosen here."""
    dims = spec.spatial_dims
    if isinstance(tile, int):
        tile = (tile,) * dims
    tile_ = default_tile(padded, spec.total_stride, dims, tile or spec.tile)
    windows = window_grid(padded, tile_, spec.total_stride, overlap)
    jobs = [(z, w) for z in range(stack) for w in windows]
    auto_batch = batch_size is None
    if batch_size is None:
        batch_size = (8 if dev.type == "cpu" else 32) if dims == 2 else (1 if dev.type == "cpu" else 4)
    return tile_, jobs, max(1, min(batch_size, len(jobs))), auto_batch


def _pad(x: torch.Tensor, plane, padded) -> torch.Tensor:
    """Zeros after the end of each plane axis, up to ``padded``."""
    pad = []
    for n, p in zip(reversed(plane), reversed(padded), strict=True):
        pad += [0, p - n]
    return torch.nn.functional.pad(x, pad) if any(pad) else x


def _to_network(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """A (C, *scan) tensor laid out for the network (see ``orientation``)."""
    x = x.permute(0, *[1 + p for p in layout.permutation])
    return x.flip([1 + a for a in layout.flipped]) if layout.flipped else x
