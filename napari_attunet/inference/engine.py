"""The prediction engine: a generator that yields progress and returns a Prediction.

``iter_predict`` is the whole computation and knows nothing of any GUI; ``predict`` drives it
with a plain callback. The napari widget runs ``iter_predict`` in a worker thread.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import Cancelled, InputError
from ..models import AttentionUNetBase, GateGeometry
from .devices import autocast, resolve_device, resolve_precision
from .memory import check_memory, check_shape_memory, estimate_memory
from .optimize import prepared
from .orientation import Layout, network_layout
from .postprocess import GateMap, Prediction, quantize
from .preprocess import (check_resampled_size, check_spacing, check_tile, fit,
                         prepare_channels, resample, resample_back, resample_factors,
                         resampled_shape, resolve_normalization, spatial_shape)
from .runtime import resolve_runtime, runtime_device
from .tiling import Stitcher, default_tile, round_up, window_grid
from .tta import activation, flip_mean, flips as tta_flips, forward_flips, unflip_gate

__all__ = ["Progress", "context_slices", "estimate_memory", "iter_predict", "predict", "unflip_gate"]


@dataclass(frozen=True)
class Progress:
    """One step of a run: ``done`` of ``total`` batches in ``stage``."""

    stage: str
    done: int
    total: int
    message: str = ""


def _cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def iter_predict(image, model: AttentionUNetBase, *, spacing: Sequence[float] | None = None,
                 channel_axis: int | None = None, normalization=None,
                 tile: Sequence[int] | int | None = None, overlap: float = 0.5,
                 device: str = "auto", precision: str = "auto", tta: bool = False,
                 cancel=None, batch_size: int | None = None, attention: bool = True,
                 name: str = "the image", fold_batchnorm: bool = True,
                 channels_last: bool = True, affine=None, file_orientation: str | None = None,
                 orientation: str | None = None, region: Sequence[slice] | None = None,
                 runtime: str = "auto", intensity=None, out=None, scheduler=None, **blockwise,
                 ) -> Generator[Progress, None, Prediction]:
    """Run ``model`` over ``image`` tile by tile, yielding a Progress after each batch.

    ``image`` is an array (napari axis order) or a scan from ``napari_attunet.io.read``, whose
    spacing, affine and file orientation are then used. ``affine`` places the array in world
    (see ``napari_attunet.geometry``), so that the network sees the scan laid out as its
    checkpoint was trained (``ModelSpec.network_orientation``; ``orientation`` overrides it);
    without one, the array is taken as this tool's reader lays scans out, (z, y, x) toward
    Superior, Posterior, Left. ``region`` (slices) predicts only that part of the image, with
    the whole image's intensity statistics and half a tile of context around it, as a full run
    would see it. ``runtime``: 'auto' (OpenVINO on the CPU when installed, else PyTorch),
    'torch' or 'openvino'. Returns (as the generator's value) a :class:`Prediction` on the
    input grid (the region's grid with ``region``). Raises InputError for images the model
    cannot take and Cancelled when ``cancel`` fires.

    A dask or zarr ``image``, or an ``out`` store, runs block by block on Dask (see
    ``blockwise``, whose options ``block``, ``workers``, ``thresholds`` pass through);
    ``intensity`` (one fitted IntensityMap per channel) skips the fit.
    """
    from .lazy import is_lazy

    if out is not None or is_lazy(image) or scheduler is not None or blockwise:
        from .blockwise import iter_blockwise

        return (yield from iter_blockwise(
            image, model, spacing=spacing, channel_axis=channel_axis,
            normalization=normalization, tile=tile, overlap=overlap, device=device,
            precision=precision, tta=tta, cancel=cancel, batch_size=batch_size,
            attention=attention, name=name, fold_batchnorm=fold_batchnorm,
            channels_last=channels_last, affine=affine, file_orientation=file_orientation,
            orientation=orientation, out=out, scheduler=scheduler, region=region,
            runtime=runtime, **blockwise))
    started = time.perf_counter()
    spec = model.spec
    if hasattr(image, "array") and hasattr(image, "affine"):  # an io.Volume
        spacing = image.spacing if spacing is None else spacing
        affine = image.affine if affine is None else affine
        file_orientation = file_orientation or image.source.get("orientation")
        image = image.array
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), not {overlap}.")
    spacing = check_spacing(spacing, name)
    tile = check_tile(tile, spec.spatial_dims)
    dev = resolve_device(runtime_device(runtime, device))
    prec = resolve_precision(precision, dev)
    engine = resolve_runtime(runtime, dev)
    if engine == "openvino":
        channels_last = False  # OpenVINO picks its own layouts; it takes plain arrays
    notes: list[str] = []
    check_shape_memory(image, spec, name)
    check_resampled_size(spatial_shape(image, channel_axis), spacing, spec, name)
    yield Progress("preparing", 0, 1, "normalizing")

    channels = prepare_channels(image, spec, channel_axis, name)
    norm = resolve_normalization(normalization, spec)
    # A region takes its statistics from the whole image, as the full run would.
    if intensity is None and region is not None:
        intensity = [fit(c, norm) for c in channels]
    x = torch.from_numpy(np.array(channels, dtype=np.float32))  # a copy: normalized in place
    dims = spec.spatial_dims
    if affine is not None and np.shape(affine) != (x.dim(), x.dim()):
        raise InputError(f"{name}: affine must be {x.dim()}x{x.dim()} for an image with "
                         f"{x.dim() - 1} spatial axes, not {np.shape(affine)}.")
    layout = network_layout(spec, x.dim() - 1, affine, file_orientation, orientation)
    context = None
    if region is not None:
        x, context = _with_context(x, region, spec, tile)
    scan_shape = tuple(x.shape[1:])
    stack = scan_shape[0] if len(scan_shape) == 3 and dims == 2 else 1

    # From here on, spatial axes are laid out as the network was trained to see them.
    perm = None if layout.identity else layout.permutation
    factors = resample_factors(spacing, spec, len(scan_shape))
    if perm is not None:
        x = _to_network(x, layout)
        factors = None if factors is None else tuple(factors[p] for p in perm)
        notes.append(f"the network saw the scan {layout.description}")
    image_shape = tuple(x.shape[1:])
    if factors is not None:
        work_shape = resampled_shape(image_shape, factors)
        x = resample(x, factors)
        notes.append(f"resampled {image_shape} -> {work_shape} to the training spacing "
                     f"{tuple(spec.spacing or ())} mm")
    else:
        work_shape = image_shape
    # After reorientation and resampling, where MONAI's pipelines normalize (clipping and
    # `nonzero` are decided on the voxels the network sees).
    for c in range(x.shape[0]):
        (intensity[c] if intensity else fit(x[c].numpy(), norm)).apply(x[c])
    plane = work_shape[-dims:]
    stride = spec.total_stride
    padded = tuple(round_up(n, s) for n, s in zip(plane, stride))
    if isinstance(tile, int):
        tile = (tile,) * dims
    tile_ = default_tile(padded, stride, dims, tile or spec.tile)
    windows = window_grid(padded, tile_, stride, overlap)
    jobs = [(z, w) for z in range(stack) for w in windows]
    auto_batch = batch_size is None
    if batch_size is None:
        batch_size = (8 if dev.type == "cpu" else 32) if dims == 2 else (1 if dev.type == "cpu" else 4)
    batch_size = max(1, min(batch_size, len(jobs)))

    host, device_bytes = estimate_memory(model, padded, tile_, batch_size, stack, attention)
    stitch_on_device = check_memory(host, device_bytes, dev, name)
    if dev.type != "cpu" and not stitch_on_device:
        notes.append("stitching on the CPU: the GPU cannot hold the whole-image buffers")

    pad = []
    for n, p in zip(reversed(plane), reversed(padded)):
        pad += [0, p - n]
    x = torch.nn.functional.pad(x, pad) if any(pad) else x
    if engine == "openvino":
        from . import runtime_openvino

        if not runtime_openvino.is_ready(model):
            yield Progress("preparing", 0, 1, runtime_openvino.COMPILING)
        net: Any = runtime_openvino.network(model, prec)  # called as the torch network is
        if auto_batch and dims == 3:  # one tile per infer request, all running at once
            batch_size = max(1, min(net.parallel, len(jobs)))
    else:
        net = prepared(model, dev, fold=fold_batchnorm, layout=channels_last)
    autocast_precision = "fp32" if engine == "openvino" else prec  # OpenVINO has its own hint
    gates = spec.gates if attention else ()
    flips = tta_flips(dims, tta)
    spread = len(flips) > 1  # one more channel: the flips' disagreement (Prediction.uncertainty)
    stitcher = Stitcher(spec.out_channels + spread, padded, tile_, gates, stack,
                        dev if stitch_on_device else "cpu")
    memory_format = (torch.channels_last if dims == 2 else torch.channels_last_3d) \
        if channels_last and dev.type != "mps" else torch.contiguous_format

    total = math.ceil(len(jobs) / batch_size)
    done_batches = 0
    position = 0
    yield Progress("predicting", 0, total,
                   f"{len(jobs)} tiles of {tile_} on {dev} ({prec}, {engine})")
    while position < len(jobs):
        if _cancelled(cancel):
            raise Cancelled(f"prediction on {name} was cancelled; no result was kept.")
        chunk = jobs[position:position + batch_size]
        try:
            values, maps = _run_batch(net, x, chunk, tile_, dev, autocast_precision, flips,
                                      spec.output, gates, memory_format)
        except torch.OutOfMemoryError:
            if dev.type != "cuda":
                raise
            torch.cuda.empty_cache()
            if batch_size > 1:
                batch_size = max(1, batch_size // 2)
                message = f"GPU out of memory: batch size lowered to {batch_size}"
            elif stitcher.device.type != "cpu":
                stitcher.to("cpu")
                message = "GPU out of memory: stitching moved to the CPU"
            else:
                raise InputError(f"{name}: even one tile of {tile_} does not fit in GPU memory; "
                                 "choose a smaller tile or the CPU.") from None
            notes.append(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            total = done_batches + math.ceil((len(jobs) - position) / batch_size)
            yield Progress("predicting", done_batches, total, message)
            continue
        for i, (z, start) in enumerate(chunk):
            stitcher.add(z, start, values[i], [m[i] for m in maps])
        position += len(chunk)
        done_batches += 1
        yield Progress("predicting", done_batches, total)
    if _cancelled(cancel):
        raise Cancelled(f"prediction on {name} was cancelled; no result was kept.")

    yield Progress("stitching", total, total, "blending tiles")
    blended, gate_sums = stitcher.result()
    del stitcher
    crop = (slice(None),) + ((slice(None),) if stack > 1 else ()) + tuple(slice(0, n) for n in plane)
    blended = blended[crop]
    probs = blended if tta else activation(blended, spec.output, 0)
    if factors is not None:
        probs = resample_back(probs, factors, image_shape)
    gate_maps = _gate_maps(gate_sums, gates, plane, stack, factors, image_shape, work_shape)
    if perm is not None:
        probs = _from_network(probs, layout)
        gate_maps = [_gate_from_network(g, layout, image_shape) for g in gate_maps]
    if context is not None:
        probs, gate_maps = _crop_context(probs, gate_maps, context)
    _check_finite_output(probs, x, name)
    quantized = quantize(probs)
    del probs, blended
    return Prediction(
        quantized=quantized[:spec.out_channels], disagreement=quantized[-1] if spread else None,
        output=spec.output, class_names=spec.class_labels, gates=gate_maps,
        spacing=tuple(float(s) for s in spacing)[-len(scan_shape):] if spacing is not None else None,
        device=str(dev), precision=prec, seconds=time.perf_counter() - started, tile=tile_,
        overlap=overlap, notes=notes, runtime=engine)


def _check_finite_output(probs: torch.Tensor, x: torch.Tensor, name: str) -> None:
    """Finite inputs can still overflow the network (values near the float32 limit with no
    normalization): refuse probabilities that are not numbers rather than return zeros."""
    bad = int(probs.numel() - torch.isfinite(probs).sum())
    if bad:
        top = float(x.abs().max()) if x.numel() else 0.0
        raise InputError(f"{name}: the network's output is not a number at {bad} places: its "
                         f"input reaches {top:.3g}, far outside what it was trained on; choose "
                         "a normalization (zscore, ct:LOW,HIGH or percentile) for this image.")


def _to_network(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """A (C, *scan) tensor laid out for the network (see ``orientation``)."""
    x = x.permute(0, *[1 + p for p in layout.permutation])
    return x.flip([1 + a for a in layout.flipped]) if layout.flipped else x


def _from_network(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    if layout.flipped:
        x = x.flip([1 + a for a in layout.flipped])
    return x.permute(0, *[1 + p for p in layout.inverse])


def _gate_from_network(gate: GateMap, layout: Layout, network_shape) -> GateMap:
    """A gate map computed on the network's layout, brought back to the scan's.

    Flipping an axis of n voxels reverses the cells: cell i, centred on ``offset + stride * i``,
    lands on ``n - 1 - offset - stride * i``, so the grid keeps its stride and gets a new offset.
    """
    data, stride, offset = gate.data, list(gate.stride), list(gate.offset)
    for a in layout.flipped:
        cells = data.shape[1 + a]
        offset[a] = network_shape[a] - 1 - offset[a] - stride[a] * (cells - 1)
        data = np.flip(data, 1 + a)
    inverse = layout.inverse
    data = np.ascontiguousarray(np.transpose(data, (0,) + tuple(1 + p for p in inverse)))
    return GateMap(data, tuple(stride[p] for p in inverse), tuple(offset[p] for p in inverse),
                   gate.name)


def _with_context(x: torch.Tensor, region: Sequence[slice], spec, tile) -> tuple:
    """The region grown by half a tile on each side (within the image), and where it lies."""
    outer, inner = context_slices(tuple(x.shape[1:]), region, spec, tile)
    return x[(slice(None),) + outer], inner


def context_slices(shape: Sequence[int], region: Sequence[slice], spec,
                   tile) -> tuple[tuple[slice, ...], tuple[tuple[int, int], ...]]:
    """The slices of ``region`` grown by its context, and the region's bounds inside them."""
    shape = tuple(shape)
    if len(region) != len(shape):
        raise InputError(f"region has {len(region)} axes, the image {len(shape)}.")
    dims = spec.spatial_dims
    if isinstance(tile, int):
        tile = (tile,) * dims
    padded = tuple(round_up(n, st) for n, st in zip(shape[-dims:], spec.total_stride))
    full_tile = default_tile(padded, spec.total_stride, dims, tile or spec.tile)
    # Half of the largest tile dimension on every plane axis, whatever the network's axis order.
    margin = max(max(full_tile) // 2, max(spec.total_stride))
    # Context starts on a multiple of the total stride, so gate grids match a full run's.
    step = max(spec.total_stride)
    margins = [(0, 1)] * (len(shape) - dims) + [(margin, step)] * dims
    inner, outer = [], []
    for sl, n, (m, grid) in zip(region, shape, margins):
        start, stop, _ = sl.indices(n)
        if stop <= start:
            raise InputError(f"region {tuple(region)} is empty for an image of shape {shape}.")
        lo, hi = max(0, (start - m) // grid * grid), min(n, stop + m)
        outer.append(slice(lo, hi))
        inner.append((start - lo, stop - lo))
    return tuple(outer), tuple(inner)


def _crop_context(probs: torch.Tensor, gates: list[GateMap], inner) -> tuple:
    """Keep the region: probabilities by slicing, gate maps by the cells centred inside it."""
    probs = probs[(slice(None),) + tuple(slice(a, b) for a, b in inner)]
    cropped = []
    for g in gates:
        keep, offset = [], []
        for (a, b), s, o, n in zip(inner, g.stride, g.offset, g.data.shape[1:]):
            first = max(0, math.ceil((a - o) / s - 1e-9))
            last = min(n, math.ceil((b - o) / s - 1e-9))
            keep.append(slice(first, max(first + 1, last)))
            offset.append(o + s * first - a)
        data = np.ascontiguousarray(g.data[(slice(None),) + tuple(keep)])
        cropped.append(GateMap(data, g.stride, tuple(offset), g.name))
    return probs, cropped


def _run_batch(net, x, chunk, tile, dev, prec, flips, output, gate_geometry, memory_format):
    """Forward one batch of tiles (with TTA flips), returning float32 values and gate maps."""
    stacked = x.dim() - 1 > len(tile)
    crops = []
    for z, start in chunk:
        region = tuple(slice(s, s + t) for s, t in zip(start, tile))
        crops.append(x[(slice(None), z) + region] if stacked else x[(slice(None),) + region])
    batch = torch.stack(crops).to(dev, non_blocking=True).contiguous(memory_format=memory_format)
    with torch.inference_mode(), autocast(dev, prec):
        values, maps, squares = forward_flips(net, batch, flips, output, gate_geometry)
    return flip_mean(values, maps, squares, len(flips))


def _gate_maps(sums: list[torch.Tensor], gates: Sequence[GateGeometry], plane, stack: int,
               factors, image_shape, work_shape) -> list[GateMap]:
    """Crop each stitched gate to the image and express its geometry in input voxels."""
    out = []
    for k, (data, g) in enumerate(zip(sums, gates), start=1):
        cells = tuple(math.ceil(n / s) for n, s in zip(plane, g.stride))
        lead = (slice(None),) if stack > 1 else ()
        data = data[(slice(None),) + lead + tuple(slice(0, c) for c in cells)]
        stride = ((1.0,) if stack > 1 else ()) + tuple(float(s) for s in g.stride)
        offset = ((0.0,) if stack > 1 else ()) + tuple(float(o) for o in g.offset)
        if factors is not None:
            # Resampled voxel r lies at input index r / f (see preprocess.resample).
            stride = tuple(s / f for s, f in zip(stride, factors))
            offset = tuple(o / f for o, f in zip(offset, factors))
        out.append(GateMap(data.clamp_(0, 1).cpu().numpy(), stride, offset, f"gate {k}"))
    return out


def predict(image, model: AttentionUNetBase, spacing: Sequence[float] | None = None,
            channel_axis: int | None = None, normalization=None,
            tile: Sequence[int] | int | None = None, overlap: float = 0.5,
            device: str = "auto", precision: str = "auto", tta: bool = False,
            runtime: str = "auto", progress: Callable[[int, int], None] | None = None,
            cancel=None, **options) -> Prediction:
    """Segment ``image`` with ``model``; see DESIGN.md for every argument.

    ``progress(done, total)`` is called after each batch; ``cancel`` (a threading.Event or a
    callable) stops the run within one batch and raises Cancelled.
    """
    steps = iter_predict(image, model, spacing=spacing, channel_axis=channel_axis,
                         normalization=normalization, tile=tile, overlap=overlap, device=device,
                         precision=precision, tta=tta, runtime=runtime, cancel=cancel,
                         **options)
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None and step.stage == "predicting":
            progress(step.done, step.total)
