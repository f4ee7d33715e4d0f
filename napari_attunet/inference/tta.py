"""Test-time augmentation: mirrored flips of a batch, undone on logits and gate maps, and the
flips' mean and disagreement."""

from __future__ import annotations

import itertools

import torch

from ..models import GateGeometry


def flips(dims: int, tta: bool) -> list[tuple[int, ...]]:
    """The mirrored flips over the spatial axes of a (B, C, *spatial) tensor."""
    axes = tuple(range(2, 2 + dims))
    if not tta:
        return [()]
    return [c for r in range(dims + 1) for c in itertools.combinations(axes, r)]


def activation(logits: torch.Tensor, output: str, dim: int) -> torch.Tensor:
    return torch.softmax(logits, dim=dim) if output == "softmax" else torch.sigmoid(logits)


def unflip_gate(alpha: torch.Tensor, axes: tuple[int, ...], geometry: GateGeometry) -> torch.Tensor:
    """A gate map computed on a flipped tile, put back on the unflipped tile's gate grid.

    Flipping cell i of a grid centred on ``offset + stride * i`` lands it ``stride - 1 -
    2 * offset`` voxels off the grid: zero for max-pooled grids, a fraction of a cell for grids of
    strided convolutions (offset 0), which is interpolated back linearly.
    """
    alpha = alpha.flip(axes)
    for axis in axes:
        a = axis - 2
        shift = (geometry.stride[a] - 1 - 2 * geometry.offset[a]) / geometry.stride[a]
        if shift == 0 or alpha.shape[axis] < 2:
            continue
        before = torch.cat([alpha.narrow(axis, 0, 1), alpha.narrow(axis, 0, alpha.shape[axis] - 1)], axis)
        alpha = (1 - shift) * alpha + shift * before
    return alpha


def forward_flips(
    net, batch: torch.Tensor, flip_axes: list[tuple[int, ...]], output: str, gate_geometry
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """Float32 sums over the flips of ``batch``: values, gate maps and (with several flips)
    squared probabilities; several flips sum probabilities, one gives the logits."""
    values, maps, squares = None, None, None
    for axes in flip_axes:
        inp = batch.flip(axes) if axes else batch
        if gate_geometry:
            logits, gates = net.forward_with_attention(inp)
        else:
            logits, gates = net(inp), []
        logits = logits.float()
        gates = [g.float() for g in gates]
        if axes:
            logits = logits.flip(axes)
            gates = [unflip_gate(g, axes, geo) for g, geo in zip(gates, gate_geometry, strict=True)]
        if len(flip_axes) > 1:
            logits = activation(logits, output, 1)
            squares = logits * logits if squares is None else squares.addcmul_(logits, logits)
        values = logits if values is None else values.add_(logits)
        maps = gates if maps is None else [m.add_(g) for m, g in zip(maps, gates, strict=True)]
    assert values is not None and maps is not None
    return values, maps, squares


def flip_mean(
    values: torch.Tensor, maps: list[torch.Tensor], squares: torch.Tensor | None, count: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The mean over ``count`` flips, with one more channel: the flips' disagreement."""
    if count < 2 or squares is None:
        return values, maps
    values = values / count
    # the largest per-class standard deviation over the flips, x2 so that it spans [0, 1]
    std = (squares / count - values * values).clamp_(min=0).sqrt_().amax(1, keepdim=True)
    return torch.cat([values, std.mul_(2)], 1), [m / count for m in maps]
