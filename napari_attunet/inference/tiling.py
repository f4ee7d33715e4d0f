"""Sliding windows whose steps are multiples of the network's total stride, Gaussian blending,
and stitching of logits and gate maps into whole-image buffers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..models import GateGeometry


def round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def default_tile(
    shape: Sequence[int], stride: Sequence[int], spatial_dims: int, requested: Sequence[int] | None = None
) -> tuple[int, ...]:
    """A tile no larger than the (padded) image, a multiple of the stride on every axis.

    3D: 128 per axis (96 for wide networks is the caller's choice); 2D: 512.
    """
    base = requested or ((512,) * spatial_dims if spatial_dims == 2 else (128,) * spatial_dims)
    base = tuple(base)[-spatial_dims:]
    return tuple(
        min(round_up(max(int(b), s), s), round_up(n, s)) for b, n, s in zip(base, shape, stride, strict=True)
    )


def starts(size: int, tile: int, stride: int, overlap: float) -> list[int]:
    """Window starts along one axis: multiples of ``stride``, the last flush with the end.

    ``size`` and ``tile`` are multiples of ``stride`` (the image is padded first).
    """
    if tile >= size:
        return [0]
    step = max(stride, int(tile * (1.0 - overlap)) // stride * stride)
    out = list(range(0, size - tile, step))
    out.append(size - tile)
    return out


def window_grid(
    size: Sequence[int], tile: Sequence[int], stride: Sequence[int], overlap: float
) -> list[tuple[int, ...]]:
    return list(
        itertools.product(*[starts(n, t, s, overlap) for n, t, s in zip(size, tile, stride, strict=True)])
    )


def gaussian_1d(n: int, sigma: float, positions: np.ndarray | None = None) -> np.ndarray:
    """The importance profile sampled at ``positions`` (voxel centres 0..n-1 by default)."""
    x = np.arange(n, dtype=np.float64) if positions is None else positions
    centre = (n - 1) / 2.0
    return np.exp(-0.5 * ((x - centre) / sigma) ** 2)


def importance(
    tile: Sequence[int], positions: Sequence[np.ndarray] | None = None, sigma_scale: float = 0.125
) -> torch.Tensor:
    """Separable Gaussian weights, sigma = tile/8, floored so that no voxel gets zero weight.

    With ``positions`` the same function is sampled at a gate grid's cell centres, so gates are
    blended with the same weights as the logits.
    """
    profiles = []
    for a, n in enumerate(tile):
        p = gaussian_1d(n, max(n * sigma_scale, 1e-3), None if positions is None else positions[a])
        profiles.append(p / p.max())
    weight = profiles[0]
    for p in profiles[1:]:
        weight = np.multiply.outer(weight, p)
    weight = np.maximum(weight, 1e-3)
    return torch.from_numpy(weight.astype(np.float32))


@dataclass
class GateBuffer:
    """A stitching buffer on one gate's own grid."""

    geometry: GateGeometry
    sum: torch.Tensor  # (heads, *grid)
    weight: torch.Tensor  # (*grid)
    tile_weight: torch.Tensor  # importance sampled at the gate cells of one tile
    shared: bool = False  # on the logits' own grid: ``weight`` is the Stitcher's, added once


class Stitcher:
    """Accumulates weighted tiles of logits (or probabilities) and gate maps.

    Buffers cover ``stack`` independent images of ``size`` (a multiple of the total stride) on
    a leading axis: the slices of a volume run through a 2D model, else one image.
    """

    def __init__(
        self,
        channels: int,
        size: Sequence[int],
        tile: Sequence[int],
        gates: Sequence[GateGeometry] | None,
        stack: int = 1,
        device="cpu",
        sigma_scale: float = 0.125,
    ):
        self.size, self.tile, self.stack = tuple(size), tuple(tile), stack
        self.device = torch.device(device)
        lead = (stack,)
        self.sum = torch.zeros((channels,) + lead + self.size, device=self.device)
        self.weight = torch.zeros(lead + self.size, device=self.device)
        self.tile_weight = importance(tile, sigma_scale=sigma_scale).to(self.device)
        self.gates: list[GateBuffer] = []
        for g in gates or ():
            if all(s == 1 for s in g.stride) and not any(g.offset):
                self.gates.append(
                    GateBuffer(
                        g,
                        torch.zeros((g.heads,) + lead + self.size, device=self.device),
                        self.weight,
                        self.tile_weight,
                        shared=True,
                    )
                )
                continue
            grid = tuple(n // s for n, s in zip(self.size, g.stride, strict=True))
            cells = tuple(n // s for n, s in zip(self.tile, g.stride, strict=True))
            positions = [g.offset[a] + g.stride[a] * np.arange(cells[a]) for a in range(len(cells))]
            self.gates.append(
                GateBuffer(
                    g,
                    torch.zeros((g.heads,) + lead + grid, device=self.device),
                    torch.zeros(lead + grid, device=self.device),
                    importance(tile, positions, sigma_scale).to(self.device),
                )
            )

    def aggregate(self, values: tuple[torch.Tensor, Sequence[torch.Tensor]], location) -> None:
        """Add one tile: ``values`` is (its values (C, *tile), each gate map (heads, *cells)),
        ``location`` (image index, window start)."""
        tile, gate_maps = values
        index, start = location
        lead = (index,)
        region = lead + tuple(slice(s, s + t) for s, t in zip(start, self.tile, strict=True))
        w = self.tile_weight
        self.sum[(slice(None),) + region].addcmul_(tile.to(self.device, torch.float32), w)
        self.weight[region] += w
        for buf, alpha in zip(self.gates, gate_maps, strict=True):
            cells = alpha.shape[1:]
            g_start = tuple(s // st for s, st in zip(start, buf.geometry.stride, strict=True))
            g_region = lead + tuple(slice(s, s + c) for s, c in zip(g_start, cells, strict=True))
            buf.sum[(slice(None),) + g_region].addcmul_(alpha.to(self.device, torch.float32), buf.tile_weight)
            if not buf.shared:
                buf.weight[g_region] += buf.tile_weight

    def to(self, device) -> Stitcher:
        """Move every buffer to ``device`` (in place; shared gate weights stay shared)."""
        self.device = torch.device(device)
        self.sum, self.weight = self.sum.to(self.device), self.weight.to(self.device)
        self.tile_weight = self.tile_weight.to(self.device)
        for buf in self.gates:
            buf.sum = buf.sum.to(self.device)
            if buf.shared:
                buf.weight, buf.tile_weight = self.weight, self.tile_weight
            else:
                buf.weight, buf.tile_weight = buf.weight.to(self.device), buf.tile_weight.to(self.device)
        return self

    def finalize(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Blended values and gate maps; frees the accumulators as it goes."""
        values = self.sum.div_(self.weight)
        gates = [buf.sum.div_(buf.weight) for buf in self.gates]
        return values, gates
