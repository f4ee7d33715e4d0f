"""MONAI's ``AttentionUnet`` (monai.networks.nets), any spatial_dims, channels and kernels.

The module tree mirrors MONAI's (``model.0`` head, nested ``AttentionLayer``s, ``model.2``
1x1 conv), so a MONAI ``state_dict`` loads as it is. MONAI is not needed at run time.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .blocks import (
    AttentionUNetBase,
    batchnorm_nd,
    conv_nd,
    conv_transpose_nd,
    gate,
    instancenorm_nd,
    pooled_geometry,
)
from .spec import GateGeometry, ModelSpec


class ConvUnit(nn.Module):
    """MONAI's ``Convolution``: ``conv`` then ``adn`` (norm, then activation), or the conv alone."""

    def __init__(self, conv: nn.Module, norm: nn.Module | None = None, act: nn.Module | None = None):
        super().__init__()
        self.conv = conv
        self.adn: nn.Sequential | None = None
        if norm is not None and act is not None:
            self.adn = nn.Sequential(OrderedDict([("N", norm), ("A", act)]))

    def forward(self, x):
        x = self.conv(x)
        return self.adn(x) if self.adn is not None else x


def _same(kernel):
    return tuple((k - 1) // 2 for k in kernel)


class ConvBlock(nn.Module):
    def __init__(self, dims, cin, cout, kernel, stride):
        super().__init__()
        conv, bn = conv_nd(dims), batchnorm_nd(dims)
        self.conv = nn.Sequential(
            ConvUnit(conv(cin, cout, kernel, stride, _same(kernel)), bn(cout), nn.ReLU()),
            ConvUnit(conv(cout, cout, kernel, 1, _same(kernel)), bn(cout), nn.ReLU()),
        )

    def forward(self, x):
        return self.conv(x)


class AttentionBlock(nn.Module):
    """MONAI's gate: alpha = sigmoid(BN(psi(ReLU(BN(W_g g) + BN(W_x x))))) on x's grid."""

    def __init__(self, dims, f_int, f_g, f_l):
        super().__init__()
        conv, bn = conv_nd(dims), batchnorm_nd(dims)
        self.W_g = nn.Sequential(ConvUnit(conv(f_g, f_int, 1)), bn(f_int))
        self.W_x = nn.Sequential(ConvUnit(conv(f_l, f_int, 1)), bn(f_int))
        self.psi = nn.Sequential(ConvUnit(conv(f_int, 1, 1)), bn(1), nn.Sigmoid())
        self.relu = nn.ReLU()

    def forward(self, g, x):
        alpha = self.psi(self.relu(self.W_g(g) + self.W_x(x)))
        return x * alpha, alpha


class AttentionLayer(nn.Module):
    def __init__(self, dims, cin, cout, submodule, up_kernel, stride):
        super().__init__()
        self.attention = AttentionBlock(dims, cin // 2, cin, cin)
        up = conv_transpose_nd(dims)(
            cout, cin, up_kernel, stride, _same(up_kernel), output_padding=tuple(s - 1 for s in stride)
        )
        self.upconv = nn.Module()
        self.upconv.up = ConvUnit(up, batchnorm_nd(dims)(cin), nn.ReLU())
        merge = conv_nd(dims)(2 * cin, cin, 3, 1, 1)
        self.merge = ConvUnit(merge, instancenorm_nd(dims)(cin), nn.PReLU())
        self.submodule = submodule

    def forward(self, x, gates):
        if isinstance(self.submodule, nn.Sequential):
            below = self.submodule[1](self.submodule[0](x), gates)
        else:
            below = self.submodule(x)
        fromlower = self.upconv.up(below)
        attended, alpha = self.attention(fromlower, x)
        if gates is not None:
            gates.append(alpha)
        return self.merge(torch.cat((attended, fromlower), dim=1))


class MonaiAttentionUNet(AttentionUNetBase):
    """``monai.networks.nets.AttentionUnet`` with identical parameter names and numbers."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        d, ch = spec.spatial_dims, spec.features
        kernel, up_kernel, strides = spec.kernel_size, spec.up_kernel_size, spec.strides
        head = ConvBlock(d, spec.in_channels, ch[0], kernel, (1,) * d)
        n = len(ch) - 2
        layer = AttentionLayer(
            d, ch[n], ch[n + 1], ConvBlock(d, ch[n], ch[n + 1], kernel, strides[n]), up_kernel, strides[n]
        )
        for i in range(n - 1, -1, -1):
            sub = nn.Sequential(ConvBlock(d, ch[i], ch[i + 1], kernel, strides[i]), layer)
            layer = AttentionLayer(d, ch[i], ch[i + 1], sub, up_kernel, strides[i])
        reduce = ConvUnit(conv_nd(d)(ch[0], spec.out_channels, 1))
        self.model = nn.Sequential(head, layer, reduce)

    def _forward(self, x, gates):
        collected: list | None = [] if gates is not None else None
        y = self.model[1](self.model[0](x), collected)
        if gates is not None:
            gates += collected[::-1]  # the deepest layer appends first
        return self.model[2](y)


def gate_geometry(spec: ModelSpec) -> tuple[GateGeometry, ...]:
    """Gate k sits on the grid of encoder level k; strided same-padded convs keep offset 0."""
    levels = pooled_geometry(list(spec.strides), spec.spatial_dims, centred=False)
    return tuple(gate(*levels[i]) for i in range(len(spec.features) - 1))


def default_spec(
    dims: int,
    in_channels: int,
    out_channels: int,
    features: tuple[int, ...],
    variant: str | None = None,
    **fields,
) -> ModelSpec:
    """A network to train: stride 2 per level and 3-voxel kernels, MONAI's defaults."""
    return ModelSpec(
        family="monai",
        variant=variant or "attention_unet",
        spatial_dims=dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=features,
        strides=((2,) * dims,) * (len(features) - 1),
        kernel_size=(3,) * dims,
        up_kernel_size=(3,) * dims,
        **fields,
    )


SIGNATURE = (
    "model.0.conv.0.conv.weight",
    "model.1.attention.psi.0.conv.weight",
    "model.1.upconv.up.conv.weight",
    "model.1.merge.conv.weight",
    "model.2.conv.weight",
)


def infer_spec(sd: dict) -> ModelSpec:
    """Channels from the nesting of ``model.1.submodule.1...``; strides are taken as 2.

    Strides leave no trace in the weights: a network trained with other strides needs
    ``overrides={"strides": ...}`` once, or a native checkpoint that records them.
    """
    first = sd["model.0.conv.0.conv.weight"]
    dims = first.ndim - 2
    channels = [int(first.shape[0])]
    prefix = "model.1"
    while True:
        # ConvTranspose weights are (in, out, *k): "in" is the next level's width.
        channels.append(int(sd[f"{prefix}.upconv.up.conv.weight"].shape[0]))
        if f"{prefix}.submodule.1.attention.psi.0.conv.weight" not in sd:
            break
        prefix += ".submodule.1"
    out = int(sd["model.2.conv.weight"].shape[0])
    return ModelSpec(
        family="monai",
        variant="attention_unet",
        spatial_dims=dims,
        in_channels=int(first.shape[1]),
        out_channels=out,
        features=tuple(channels),
        output="sigmoid" if out == 1 else "softmax",
        strides=((2,) * dims,) * (len(channels) - 1),
        kernel_size=tuple(int(k) for k in first.shape[2:]),
        up_kernel_size=tuple(int(k) for k in sd["model.1.upconv.up.conv.weight"].shape[2:]),
    )
