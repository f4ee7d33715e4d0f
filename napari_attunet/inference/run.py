"""The second stage of a run: batches of tiles through the network (PyTorch or OpenVINO, with
TTA flips), blended by a Stitcher."""

from __future__ import annotations

import math
import warnings
from collections.abc import Generator
from typing import Any

import torch

from ..errors import Cancelled, InputError
from ..models import AttentionUNetBase
from .devices import autocast
from .optimize import prepared
from .options import RunOptions
from .plan import Plan, Target
from .progress import Progress, cancelled
from .tiling import Stitcher
from .tta import flip_mean, forward_flips
from .tta import flips as tta_flips


def _network(
    model: AttentionUNetBase,
    plan: Plan,
    target: Target,
    fold_batchnorm: bool,
    net: Any = None,
) -> Generator[Progress, None, tuple[Any, int]]:
    """The network to call (PyTorch, OpenVINO's compiled model, or ``net`` when given: int8) and
    the batch size for it."""
    if target.engine != "openvino":
        return prepared(model, target.dev, fold=fold_batchnorm, layout=target.channels_last), plan.batch_size
    from . import runtime_openvino

    if net is None and not runtime_openvino.is_ready(model):
        yield Progress("preparing", 0, 1, runtime_openvino.COMPILING)
    if net is None:
        net = runtime_openvino.network(model, target.precision)  # called as the torch network is
    batch_size = plan.batch_size
    if plan.auto_batch and model.spec.spatial_dims == 3:  # one tile per infer request, all at once
        batch_size = max(1, min(net.parallel, len(plan.jobs)))
    return net, batch_size


def run_tiles(
    plan: Plan,
    model: AttentionUNetBase,
    target: Target,
    options: RunOptions,
    *,
    cancel=None,
    net: Any = None,
) -> Generator[Progress, None, tuple[torch.Tensor, list[torch.Tensor]]]:
    """Every batch of tiles through the network (with TTA flips), blended by a Stitcher; on a
    GPU out of memory, halve the batch, then stitch on the CPU, then give up. Returns the
    blended values and gate maps on the padded plane."""
    spec, dev, jobs, name = model.spec, target.dev, plan.jobs, options.name
    net, batch_size = yield from _network(model, plan, target, options.fold_batchnorm, net)
    # OpenVINO has its own precision hint
    autocast_precision = "fp32" if target.engine == "openvino" else target.precision
    gates = spec.gates if options.attention else ()
    flips = tta_flips(spec.spatial_dims, options.tta)
    spread = len(flips) > 1  # one more channel: the flips' disagreement (Prediction.uncertainty)
    stitcher = Stitcher(
        spec.out_channels + spread,
        plan.padded,
        plan.tile,
        gates,
        plan.stack,
        dev if plan.stitch_on_device else "cpu",
    )
    memory_format = (
        (torch.channels_last if spec.spatial_dims == 2 else torch.channels_last_3d)
        if target.channels_last and dev.type != "mps"
        else torch.contiguous_format
    )

    total = math.ceil(len(jobs) / batch_size)
    done_batches = 0
    position = 0
    yield Progress(
        "predicting",
        0,
        total,
        f"{len(jobs)} tiles of {plan.tile} on {dev} ({target.precision}, {target.engine})",
    )
    while position < len(jobs):
        if cancelled(cancel):
            raise Cancelled(f"prediction on {name} was cancelled; no result was kept.")
        chunk = jobs[position : position + batch_size]
        try:
            values, maps = _run_batch(
                net,
                plan.x,
                chunk,
                plan.tile,
                dev,
                autocast_precision,
                flips,
                spec.output,
                gates,
                memory_format,
            )
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
                raise InputError(
                    f"{name}: even one tile of {plan.tile} does not fit in GPU "
                    "memory; choose a smaller tile or the CPU."
                ) from None
            plan.notes.append(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            total = done_batches + math.ceil((len(jobs) - position) / batch_size)
            yield Progress("predicting", done_batches, total, message)
            continue
        for i, (z, start) in enumerate(chunk):
            stitcher.aggregate((values[i], [m[i] for m in maps]), (z, start))
        position += len(chunk)
        done_batches += 1
        yield Progress("predicting", done_batches, total)
    if cancelled(cancel):
        raise Cancelled(f"prediction on {name} was cancelled; no result was kept.")
    yield Progress("stitching", total, total, "blending tiles")
    return stitcher.finalize()


def _run_batch(net, x, chunk, tile, dev, prec, flips, output, gate_geometry, memory_format):
    """Forward one batch of tiles (with TTA flips), returning float32 values and gate maps."""
    crops = []
    for z, start in chunk:
        region = tuple(slice(s, s + t) for s, t in zip(start, tile, strict=True))
        crops.append(x[(slice(None), z) + region])
    batch = torch.stack(crops).to(dev, non_blocking=True).contiguous(memory_format=memory_format)
    with torch.inference_mode(), autocast(dev, prec):
        values, maps, squares = forward_flips(net, batch, flips, output, gate_geometry)
    return flip_mean(values, maps, squares, len(flips))
