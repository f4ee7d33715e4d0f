"""The last stage of a run: blended values and gate maps cropped, resampled and laid out back
on the input's grid, checked and quantized."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..models import GateGeometry
from .options import RunOptions
from .orientation import Layout
from .plan import Plan
from .postprocess import GateMap, keep_argmax, quantize
from .preprocess import resample_back
from .tta import activation


def finish(
    plan: Plan,
    blended: torch.Tensor,
    gate_sums: list[torch.Tensor],
    spec,
    options: RunOptions,
) -> tuple[np.ndarray, list[GateMap]]:
    """Crop the padding, resample and lay out back on the input's grid, quantize."""
    if len(plan.scan_shape) == spec.spatial_dims:  # the leading axis was the Stitcher's alone
        blended, gate_sums = blended[:, 0], [g[:, 0] for g in gate_sums]
    blended = blended[(Ellipsis,) + tuple(slice(0, n) for n in plan.plane)]
    probs = blended if options.tta else activation(blended, spec.output, 0)
    if plan.factors is not None:
        probs = resample_back(probs, plan.factors, plan.image_shape, plan.window)
    gate_maps = _gate_maps(
        gate_sums,
        spec.gates if options.attention else (),
        plan.plane,
        plan.factors,
        plan.window,
    )
    if not plan.layout.identity:
        probs = _from_network(probs, plan.layout)
        gate_maps = [_gate_from_network(g, plan.layout, plan.image_shape) for g in gate_maps]
    if plan.context is not None:
        probs, gate_maps = _crop_context(probs, gate_maps, plan.context)
    _check_finite_output(probs, plan.x, options.name)
    quantized = quantize(probs)
    if spec.output == "softmax":  # labels from the stored levels are the float argmax
        keep_argmax(quantized[: spec.out_channels], probs[: spec.out_channels])
    del probs
    return quantized, gate_maps


def _gate_maps(
    sums: list[torch.Tensor], gates: Sequence[GateGeometry], plane, factors, window
) -> list[GateMap]:
    """Crop each stitched gate to the image and express its geometry in input voxels."""
    out = []
    for k, (data, g) in enumerate(zip(sums, gates, strict=True), start=1):
        cells = tuple(math.ceil(n / s) for n, s in zip(plane, g.stride, strict=True))
        data = data[(Ellipsis,) + tuple(slice(0, c) for c in cells)]
        lead = data.dim() - 1 - len(cells)  # the slices of a volume through a 2D model
        stride = (1.0,) * lead + tuple(float(s) for s in g.stride)
        offset = (0.0,) * lead + tuple(float(o) for o in g.offset)
        if factors is not None:
            # Resampled voxel r lies at input index r / f (see preprocess.resample); in a crop
            # (``window``), whole-run voxel dst_start + r at whole-run index (...) / f.
            shift = [(w.dst_start, w.src_start) for w in window] if window else [(0, 0)] * len(factors)
            stride = tuple(s / f for s, f in zip(stride, factors, strict=True))
            offset = tuple((o + d) / f - a for o, f, (d, a) in zip(offset, factors, shift, strict=True))
        out.append(GateMap(data.clamp_(0, 1).cpu().numpy(), stride, offset, f"gate {k}"))
    return out


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
    return GateMap(data, tuple(stride[p] for p in inverse), tuple(offset[p] for p in inverse), gate.name)


def _crop_context(probs: torch.Tensor, gates: list[GateMap], inner) -> tuple:
    """Keep the region: probabilities by slicing, gate maps by the cells centred inside it (none
    along an axis where the region is narrower than a cell: the context holds the windows of
    the cells centred in the region, not of their neighbours)."""
    probs = probs[(slice(None),) + tuple(slice(a, b) for a, b in inner)]
    cropped = []
    for g in gates:
        keep, offset = [], []
        for (a, b), s, o, n in zip(inner, g.stride, g.offset, g.data.shape[1:], strict=True):
            first = max(0, math.ceil((a - o) / s - 1e-9))
            last = min(n, math.ceil((b - o) / s - 1e-9))
            keep.append(slice(first, max(first, last)))
            offset.append(o + s * first - a)
        data = np.ascontiguousarray(g.data[(slice(None),) + tuple(keep)])
        cropped.append(GateMap(data, g.stride, tuple(offset), g.name))
    return probs, cropped


def _check_finite_output(probs: torch.Tensor, x: torch.Tensor, name: str) -> None:
    """Finite inputs can still overflow the network (values near the float32 limit with no
    normalization): refuse probabilities that are not numbers rather than return zeros."""
    bad = int(probs.numel() - torch.isfinite(probs).sum())
    if bad:
        top = float(x.abs().max()) if x.numel() else 0.0
        raise InputError(
            f"{name}: the network's output is not a number at {bad} places: its "
            f"input reaches {top:.3g}, far outside what it was trained on; choose "
            "a normalization (zscore, ct:LOW,HIGH or percentile) for this image."
        )
