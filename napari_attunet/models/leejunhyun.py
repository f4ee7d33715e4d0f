"""``AttU_Net`` from LeeJunHyun/Image_Segmentation, the most-starred 2D implementation.

Parameter names follow the original (``Conv1``..``Conv5``, ``Up5``/``Att5``/``Up_conv5``..,
``Conv_1x1``). Channel widths and the number of levels are read from the checkpoint, and the
same design runs in 3D (its natural generalization).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AttentionUNetBase, batchnorm_nd, conv_nd, gate, max_pool, pooled_geometry
from .spec import GateGeometry, ModelSpec


def _conv_bn_relu(dims, cin, cout):
    return [conv_nd(dims)(cin, cout, 3, 1, 1, bias=True), batchnorm_nd(dims)(cout), nn.ReLU(inplace=True)]


class ConvBlock(nn.Module):
    """The original ``conv_block``: two (conv 3, BN, ReLU)."""

    def __init__(self, dims, cin, cout):
        super().__init__()
        self.conv = nn.Sequential(*_conv_bn_relu(dims, cin, cout), *_conv_bn_relu(dims, cout, cout))

    def forward(self, x):
        return self.conv(x)


class _NearestUp2(nn.Module):
    """``nn.Upsample(scale_factor=2)``: nearest-neighbour doubling."""

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


class UpConv(nn.Module):
    """The original ``up_conv``: nearest 2x up-sampling, then (conv 3, BN, ReLU)."""

    def __init__(self, dims, cin, cout):
        super().__init__()
        self.up = nn.Sequential(_NearestUp2(), *_conv_bn_relu(dims, cin, cout))

    def forward(self, x):
        return self.up(x)


class AttentionBlock(nn.Module):
    """The original ``Attention_block``; alpha is the output of ``psi`` (conv, BN, sigmoid)."""

    def __init__(self, dims, f_g, f_l, f_int):
        super().__init__()
        conv, bn = conv_nd(dims), batchnorm_nd(dims)
        self.W_g = nn.Sequential(conv(f_g, f_int, 1, 1, 0, bias=True), bn(f_int))
        self.W_x = nn.Sequential(conv(f_l, f_int, 1, 1, 0, bias=True), bn(f_int))
        self.psi = nn.Sequential(conv(f_int, 1, 1, 1, 0, bias=True), bn(1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g, x):
        alpha = self.psi(self.relu(self.W_g(g) + self.W_x(x)))
        return x * alpha, alpha


class LeeAttUNet(AttentionUNetBase):
    """``AttU_Net(img_ch, output_ch)``; one output channel means a sigmoid output."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        d, f = spec.spatial_dims, spec.features
        self.levels = len(f)
        cin = spec.in_channels
        for i, width in enumerate(f, start=1):
            self.add_module(f"Conv{i}", ConvBlock(d, cin, width))
            cin = width
        for i in range(self.levels, 1, -1):
            hi, lo = f[i - 1], f[i - 2]
            self.add_module(f"Up{i}", UpConv(d, hi, lo))
            self.add_module(f"Att{i}", AttentionBlock(d, lo, lo, f[i - 2] // 2))
            self.add_module(f"Up_conv{i}", ConvBlock(d, 2 * lo, lo))
        self.Conv_1x1 = conv_nd(d)(f[0], spec.out_channels, 1, 1, 0)

    def _forward(self, x, gates):
        skips = [self.Conv1(x)]
        for i in range(2, self.levels + 1):
            skips.append(getattr(self, f"Conv{i}")(max_pool(skips[-1], (2,) * self.spec.spatial_dims)))
        d = skips[-1]
        maps = []
        for i in range(self.levels, 1, -1):
            d = getattr(self, f"Up{i}")(d)
            attended, alpha = getattr(self, f"Att{i}")(g=d, x=skips[i - 2])
            maps.append(alpha)
            d = getattr(self, f"Up_conv{i}")(torch.cat((attended, d), dim=1))
        if gates is not None:
            gates += maps[::-1]
        return self.Conv_1x1(d)


def gate_geometry(spec: ModelSpec) -> tuple[GateGeometry, ...]:
    """Att2 gates Conv1's full-resolution features, Att3 those of Conv2, and so on."""
    levels = pooled_geometry(list(spec.strides), spec.spatial_dims, centred=True)
    return tuple(gate(*levels[i]) for i in range(len(spec.features) - 1))


def default_spec(
    dims: int,
    in_channels: int,
    out_channels: int,
    features: tuple[int, ...],
    variant: str | None = None,
    **fields,
) -> ModelSpec:
    """A network to train: AttU_Net with the given widths."""
    return ModelSpec(
        family="leejunhyun",
        variant=variant or "attu_net",
        spatial_dims=dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=features,
        strides=((2,) * dims,) * (len(features) - 1),
        kernel_size=(3,) * dims,
        **fields,
    )


SIGNATURE = (
    "Conv1.conv.0.weight",
    "Conv2.conv.0.weight",
    "Up2.up.1.weight",
    "Att2.psi.0.weight",
    "Up_conv2.conv.0.weight",
    "Conv_1x1.weight",
)


def infer_spec(sd: dict) -> ModelSpec:
    first = sd["Conv1.conv.0.weight"]
    dims = first.ndim - 2
    features: list[int] = []
    while f"Conv{len(features) + 1}.conv.0.weight" in sd:
        features.append(int(sd[f"Conv{len(features) + 1}.conv.0.weight"].shape[0]))
    out = int(sd["Conv_1x1.weight"].shape[0])
    return ModelSpec(
        family="leejunhyun",
        variant="attu_net",
        spatial_dims=dims,
        in_channels=int(first.shape[1]),
        out_channels=out,
        features=tuple(features),
        output="sigmoid" if out == 1 else "softmax",
        strides=((2,) * dims,) * (len(features) - 1),
        kernel_size=(3,) * dims,
    )
