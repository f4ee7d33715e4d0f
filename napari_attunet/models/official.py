"""The official Attention U-Net (ozan-oktay/Attention-Gated-Networks), 2D and 3D.

One configurable class covers ``unet_CT_single_att_dsv_3D`` (variant ``single_att_dsv``),
``unet_CT_multi_att_dsv_3D`` (``multi_att_dsv``) and ``unet_grid_attention_3D``
(``grid_attention``), plus their 2D analogues. Module and parameter names follow the official
code, so its ``state_dict`` loads as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    AttentionUNetBase,
    batchnorm_nd,
    conv_nd,
    conv_transpose_nd,
    gate,
    max_pool,
    pooled_geometry,
    resize_linear,
)
from .spec import GateGeometry, ModelSpec


def _conv_bn_relu(dims, cin, cout, kernel, batchnorm, stride=1):
    padding = tuple(k // 2 for k in kernel)
    layers = [conv_nd(dims)(cin, cout, kernel, stride, padding)]
    if batchnorm:
        layers.append(batchnorm_nd(dims)(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UnetConv(nn.Module):
    """Two (conv, BN, ReLU) units: the official ``UnetConv3``."""

    def __init__(self, dims, cin, cout, kernel, batchnorm):
        super().__init__()
        self.conv1 = _conv_bn_relu(dims, cin, cout, kernel, batchnorm)
        self.conv2 = _conv_bn_relu(dims, cout, cout, kernel, batchnorm)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class GatingSignal(nn.Module):
    """The official ``UnetGridGatingSignal3``: a 1x1 conv, BN, ReLU on the centre features."""

    def __init__(self, dims, cin, cout, batchnorm):
        super().__init__()
        self.conv1 = _conv_bn_relu(dims, cin, cout, (1,) * dims, batchnorm)

    def forward(self, x):
        return self.conv1(x)


class GridAttentionBlock(nn.Module):
    """The official ``_GridAttentionBlockND``: the additive attention gate.

    ``theta`` (W_x) sub-samples x with kernel = stride = ``sub_sample``; ``phi`` (W_g) is
    resampled to that grid; alpha is resampled back to x's grid. Returns ``(W(alpha * x), alpha)``.
    """

    def __init__(
        self, dims, in_channels, gating_channels, inter_channels, sub_sample, mode, align_corners=False
    ):
        super().__init__()
        conv = conv_nd(dims)
        self.mode = mode
        self.align_corners = align_corners
        self.W = nn.Sequential(conv(in_channels, in_channels, 1), batchnorm_nd(dims)(in_channels))
        self.theta = conv(in_channels, inter_channels, sub_sample, sub_sample, 0, bias=False)
        self.phi = conv(gating_channels, inter_channels, 1, bias=True)
        self.psi = conv(inter_channels, 1, 1, bias=True)

    def forward(self, x, g):
        theta_x = self.theta(x)
        phi_g = resize_linear(self.phi(g), theta_x.shape[2:], self.align_corners)
        if self.mode == "concatenation_debug":
            f = F.softplus(theta_x + phi_g)
        else:
            f = F.relu(theta_x + phi_g)
        q = self.psi(f)
        if self.mode == "concatenation_residual":
            alpha = F.softmax(q.flatten(2), dim=2).view_as(q)
        else:
            alpha = torch.sigmoid(q)
        alpha = resize_linear(alpha, x.shape[2:], self.align_corners)
        return self.W(alpha * x), alpha


class MultiAttentionBlock(nn.Module):
    """The official CT wrapper: one or two gates, then a 1x1 conv, BN, ReLU that combines them."""

    def __init__(self, dims, in_size, gate_size, inter_size, sub_sample, mode, heads, align_corners=False):
        super().__init__()
        self.heads = heads
        for h in range(heads):
            self.add_module(
                f"gate_block_{h + 1}",
                GridAttentionBlock(dims, in_size, gate_size, inter_size, sub_sample, mode, align_corners),
            )
        self.combine_gates = nn.Sequential(
            conv_nd(dims)(in_size * heads, in_size, 1), batchnorm_nd(dims)(in_size), nn.ReLU(inplace=True)
        )

    def forward(self, x, g):
        outs = [getattr(self, f"gate_block_{h + 1}")(x, g) for h in range(self.heads)]
        gated = torch.cat([o[0] for o in outs], 1) if self.heads > 1 else outs[0][0]
        alpha = torch.cat([o[1] for o in outs], 1) if self.heads > 1 else outs[0][1]
        return self.combine_gates(gated), alpha


class UpCT(nn.Module):
    """The official ``UnetUp3_CT``: linear up-sampling, concatenation, UnetConv."""

    def __init__(self, dims, in_size, out_size, kernel, batchnorm, align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        self.conv = UnetConv(dims, in_size + out_size, out_size, kernel, batchnorm)

    def forward(self, skip, below):
        up = resize_linear(below, skip.shape[2:], self.align_corners)
        return self.conv(torch.cat([skip, up], 1))


class UpGrid(nn.Module):
    """The official ``UnetUp3``: transposed convolution or linear up-sampling, then UnetConv."""

    def __init__(
        self,
        dims,
        in_size,
        out_size,
        kernel,
        batchnorm,
        deconv,
        factor,
        deconv_kernel=None,
        align_corners=False,
    ):
        super().__init__()
        self.align_corners = align_corners
        if deconv:
            deconv_kernel = deconv_kernel or tuple(2 * f if f > 1 else 1 for f in factor)
            padding = tuple((k - f) // 2 for k, f in zip(deconv_kernel, factor, strict=True))
            self.up = conv_transpose_nd(dims)(in_size, out_size, deconv_kernel, factor, padding)
            self.conv = UnetConv(dims, in_size, out_size, kernel, batchnorm)
        else:
            self.up = None
            self.conv = UnetConv(dims, in_size + out_size, out_size, kernel, batchnorm)

    def forward(self, skip, below):
        if self.up is not None:
            up = self.up(below)
        else:
            up = resize_linear(below, skip.shape[2:], self.align_corners)
        return self.conv(torch.cat([skip, up], 1))


class Dsv(nn.Module):
    """The official ``UnetDsv3``: a 1x1 conv to the classes, then linear up-sampling."""

    def __init__(self, dims, in_size, n_classes):
        super().__init__()
        self.dsv = nn.Sequential(conv_nd(dims)(in_size, n_classes, 1))

    def forward(self, x, size, align_corners):
        return resize_linear(self.dsv(x), size, align_corners)


class OfficialAttentionUNet(AttentionUNetBase):
    """Oktay et al.'s network, as in the official repository, for 2D or 3D input."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        deconv_kernel = spec.up_kernel_size or None
        d, f = spec.spatial_dims, spec.features
        k, bn, ac = spec.kernel_size, spec.batchnorm, spec.align_corners
        grid = spec.variant == "grid_attention"
        heads = 2 if spec.variant == "multi_att_dsv" else 1

        self.conv1 = UnetConv(d, spec.in_channels, f[0], k, bn)
        self.conv2 = UnetConv(d, f[0], f[1], k, bn)
        self.conv3 = UnetConv(d, f[1], f[2], k, bn)
        self.conv4 = UnetConv(d, f[2], f[3], k, bn)
        self.center = UnetConv(d, f[3], f[4], k, bn)
        self.gating = GatingSignal(d, f[4], f[3] if grid else f[4], bn)

        sub = spec.attention_dsample
        for level in (2, 3, 4):
            size = f[level - 1]
            block: nn.Module
            if grid:
                block = GridAttentionBlock(d, size, f[3], size, sub, spec.gate_mode, ac)
            else:
                block = MultiAttentionBlock(d, size, f[level], size, sub, spec.gate_mode, heads, ac)
            self.add_module(f"attentionblock{level}", block)

        for level in (4, 3, 2, 1):
            up: nn.Module
            if grid:
                up = UpGrid(
                    d, f[level], f[level - 1], k, bn, spec.deconv, spec.strides[level - 1], deconv_kernel, ac
                )
            else:
                up = UpCT(d, f[level], f[level - 1], k, bn, ac)
            self.add_module(f"up_concat{level}", up)

        n = spec.out_channels
        if grid:
            self.final = conv_nd(d)(f[0], n, 1)
        else:
            self.dsv4 = Dsv(d, f[3], n)
            self.dsv3 = Dsv(d, f[2], n)
            self.dsv2 = Dsv(d, f[1], n)
            self.dsv1 = conv_nd(d)(f[0], n, 1)
            self.final = conv_nd(d)(n * 4, n, 1)

    def _forward(self, x, gates):
        pools = self.spec.strides
        conv1 = self.conv1(x)
        conv2 = self.conv2(max_pool(conv1, pools[0]))
        conv3 = self.conv3(max_pool(conv2, pools[1]))
        conv4 = self.conv4(max_pool(conv3, pools[2]))
        center = self.center(max_pool(conv4, pools[3]))
        gating = self.gating(center)

        if self.spec.variant == "grid_attention":
            g_conv4, att4 = self.attentionblock4(conv4, gating)
            g_conv3, att3 = self.attentionblock3(conv3, gating)
            g_conv2, att2 = self.attentionblock2(conv2, gating)
            up4 = self.up_concat4(g_conv4, center)
            up3 = self.up_concat3(g_conv3, up4)
            up2 = self.up_concat2(g_conv2, up3)
            up1 = self.up_concat1(conv1, up2)
            logits = self.final(up1)
        else:
            g_conv4, att4 = self.attentionblock4(conv4, gating)
            up4 = self.up_concat4(g_conv4, center)
            g_conv3, att3 = self.attentionblock3(conv3, up4)
            up3 = self.up_concat3(g_conv3, up4)
            g_conv2, att2 = self.attentionblock2(conv2, up3)
            up2 = self.up_concat2(g_conv2, up3)
            up1 = self.up_concat1(conv1, up2)
            size, ac = up1.shape[2:], self.spec.align_corners
            heads = [
                self.dsv1(up1),
                self.dsv2(up2, size, ac),
                self.dsv3(up3, size, ac),
                self.dsv4(up4, size, ac),
            ]
            logits = self.final(torch.cat(heads, 1))
            if self._deep is not None:
                self._deep += heads
        if gates is not None:
            gates += [att2, att3, att4]
        return logits


def gate_geometry(spec: ModelSpec) -> tuple[GateGeometry, ...]:
    """The maps come back on the grids of conv2, conv3 and conv4 (the skips they gate)."""
    levels = pooled_geometry(list(spec.strides), spec.spatial_dims, centred=True)
    heads = 2 if spec.variant == "multi_att_dsv" else 1
    return tuple(gate(*levels[i], heads=heads) for i in (1, 2, 3))


def official_strides(variant: str, dims: int) -> tuple[tuple[int, ...], ...]:
    """Pooling per level. The 3D grid-attention network pools in-plane only: (2, 2, 1)."""
    if variant == "grid_attention" and dims == 3:
        return ((2, 2, 1),) * 4
    return ((2,) * dims,) * 4


def default_spec(
    dims: int,
    in_channels: int,
    out_channels: int,
    features: tuple[int, ...],
    variant: str | None = None,
    **fields,
) -> ModelSpec:
    """A network to train; without a variant, the paper's single-gate deep-supervised one."""
    variant = variant or "single_att_dsv"
    kernel = (3, 3, 1) if variant == "grid_attention" and dims == 3 else (3,) * dims
    return ModelSpec(
        family="official",
        variant=variant,
        spatial_dims=dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=features,
        strides=official_strides(variant, dims),
        kernel_size=kernel,
        attention_dsample=(2,) * dims,
        **fields,
    )


SIGNATURE = (
    "conv1.conv1.0.weight",
    "conv2.conv1.0.weight",
    "conv3.conv1.0.weight",
    "conv4.conv1.0.weight",
    "center.conv1.0.weight",
    "gating.conv1.0.weight",
    "up_concat1.conv.conv1.0.weight",
    "final.weight",
)
_THETA = {
    "multi_att_dsv": "attentionblock2.gate_block_2.theta.weight",
    "single_att_dsv": "attentionblock2.gate_block_1.theta.weight",
    "grid_attention": "attentionblock2.theta.weight",
}


def infer_spec(sd: dict) -> ModelSpec:
    """Read the official network's hyper-parameters from its state-dict names and shapes."""
    first = sd["conv1.conv1.0.weight"]
    dims = first.ndim - 2
    variant = next((v for v, key in _THETA.items() if key in sd), None)
    if variant is None:
        raise KeyError("no attention blocks (attentionblock2.*): a plain U-Net, not an Attention U-Net")
    deconv = "up_concat4.up.weight" in sd
    return ModelSpec(
        family="official",
        variant=variant,
        spatial_dims=dims,
        in_channels=int(first.shape[1]),
        out_channels=int(sd["final.weight"].shape[0]),
        features=tuple(
            int(sd[f"{n}.conv1.0.weight"].shape[0]) for n in ("conv1", "conv2", "conv3", "conv4", "center")
        ),
        output="sigmoid" if sd["final.weight"].shape[0] == 1 else "softmax",
        strides=official_strides(variant, dims),
        kernel_size=tuple(int(k) for k in first.shape[2:]),
        up_kernel_size=tuple(int(k) for k in sd["up_concat4.up.weight"].shape[2:]) if deconv else (),
        attention_dsample=tuple(int(k) for k in sd[_THETA[variant]].shape[2:]),
        batchnorm="conv1.conv1.1.weight" in sd,
        deconv=deconv,
    )
