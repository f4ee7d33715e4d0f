"""Pieces shared by every family: N-d layer factories, resizing, and the padded base class."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .spec import GateGeometry, ModelSpec


def conv_nd(dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[dims]


def conv_transpose_nd(dims: int) -> type[nn.Module]:
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]


def batchnorm_nd(dims: int) -> type[nn.Module]:
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]


def instancenorm_nd(dims: int) -> type[nn.Module]:
    return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims]


def max_pool(x: torch.Tensor, factor: tuple[int, ...]) -> torch.Tensor:
    if all(f == 1 for f in factor):
        return x
    pool = F.max_pool2d if x.dim() == 4 else F.max_pool3d
    return pool(x, kernel_size=factor, stride=factor)


def resize_linear(
    x: torch.Tensor, size: tuple[int, ...] | torch.Size, align_corners: bool = False
) -> torch.Tensor:
    """(Bi/tri)linear resize to ``size``; a no-op when the size already matches."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align_corners)


def pooled_geometry(
    pools: list[tuple[int, ...]], dims: int, centred: bool = True
) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """Stride and offset of each level's grid after a chain of down-sampling steps.

    Level 0 is the input grid. A max-pool by ``p`` centres its cell ``i`` on ``p*i + (p-1)/2``
    of the previous grid (``centred=True``); a strided convolution with odd kernel and "same"
    padding centres it on ``p*i`` (``centred=False``).
    """
    stride = [1] * dims
    offset = [0.0] * dims
    levels = [(tuple(stride), tuple(offset))]
    for pool in pools:
        for a, p in enumerate(pool):
            if centred:
                offset[a] += stride[a] * (p - 1) / 2
            stride[a] *= p
        levels.append((tuple(stride), tuple(offset)))
    return levels


class AttentionUNetBase(nn.Module):
    """Base of every family: pads the input to the total stride, crops outputs and gates.

    Subclasses implement ``_forward(x, gates)`` for inputs whose size is a multiple of the
    total stride; when ``gates`` is a list they append each gate's map to it, finest first.
    """

    spec: ModelSpec
    source: Any  # the checkpoint file it was loaded from (``checkpoint.load_model``), or None
    metadata: dict  # that file's metadata

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.source = None
        self.metadata = {}
        self._deep: list | None = None  # deep-supervision heads, collected only for training

    def _forward(self, x: torch.Tensor, gates: list | None) -> torch.Tensor:
        raise NotImplementedError

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        size = tuple(x.shape[2:])
        if len(size) != self.spec.spatial_dims:
            raise ValueError(
                f"expected a (B, C, {'D, ' if self.spec.spatial_dims == 3 else ''}H, W) tensor "
                f"for this {self.spec.spatial_dims}D model, got shape {tuple(x.shape)}"
            )
        target = [math.ceil(n / s) * s for n, s in zip(size, self.spec.total_stride, strict=True)]
        if list(size) == target:
            return x, size
        pad: list[int] = []
        for n, t in zip(reversed(size), reversed(target), strict=True):
            pad += [0, t - n]
        return F.pad(x, pad), size

    def forward(self, x: torch.Tensor, with_attention: bool = False, deep_supervision: bool = False):
        """Logits, exactly as the original network returns them; with ``with_attention``,
        ``(logits, gates)`` as :meth:`forward_with_attention` describes; with
        ``deep_supervision``, ``(logits, heads)``: the per-level class maps of deep-supervised
        variants at full resolution (none for the other families), for training losses."""
        padded, size = self._pad(x)
        if deep_supervision:
            self._deep = []
            try:
                logits = self._forward(padded, None)
                heads = [_crop(h, size) for h in self._deep]
            finally:
                self._deep = None
            return _crop(logits, size), heads
        if not with_attention:
            return _crop(self._forward(padded, None), size)
        maps: list[torch.Tensor] = []
        logits = self._forward(padded, maps)
        gates = []
        for alpha, geometry in zip(maps, self.spec.gates, strict=True):
            grid = [math.ceil(n / s) for n, s in zip(size, geometry.stride, strict=True)]
            gates.append(_crop(alpha, grid))
        return _crop(logits, size), gates

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, [alpha_1, ..., alpha_k]): finest gate first, each (B, heads, *grid) in [0, 1]
        on the grid where the original computes it. Goes through ``__call__``, so hooks see it."""
        return self(x, with_attention=True)


def _crop(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    index = (slice(None), slice(None)) + tuple(slice(0, n) for n in size)
    return x[index]


def gate(stride: tuple[int, ...], offset: tuple[float, ...], heads: int = 1) -> GateGeometry:
    return GateGeometry(
        stride=tuple(int(s) for s in stride), offset=tuple(float(o) for o in offset), heads=heads
    )
