"""LeeJunHyun/Image_Segmentation ``AttU_Net``: key names and an independent functional oracle."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import lee_spec

import napari_attunet as na
from napari_attunet.models import build

pytestmark = pytest.mark.usefixtures("torch_single_thread")

EPS = 1e-5  # nn.BatchNorm2d's default eps, as in the original


# ---- the oracle: AttU_Net.forward written out with torch.nn.functional ------------------------


def _conv(sd, prefix, x, padding):
    w = sd[f"{prefix}.weight"]
    conv = F.conv2d if w.dim() == 4 else F.conv3d
    return conv(x, w, sd.get(f"{prefix}.bias"), stride=1, padding=padding)


def _bn(sd, prefix, x):
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=EPS,
    )


def _conv_block(sd, name, x):
    """conv_block: Conv(3, pad 1), BN, ReLU, Conv(3, pad 1), BN, ReLU as ``conv.0/1/3/4``."""
    x = F.relu(_bn(sd, f"{name}.conv.1", _conv(sd, f"{name}.conv.0", x, 1)))
    return F.relu(_bn(sd, f"{name}.conv.4", _conv(sd, f"{name}.conv.3", x, 1)))


def _up_conv(sd, name, x):
    """up_conv: nn.Upsample(scale_factor=2) (nearest), Conv(3, pad 1), BN, ReLU as ``up.1/2``."""
    x = F.interpolate(x, scale_factor=2, mode="nearest")
    return F.relu(_bn(sd, f"{name}.up.2", _conv(sd, f"{name}.up.1", x, 1)))


def _attention(sd, name, g, x):
    """Attention_block: psi = sigmoid(BN(conv(ReLU(BN(W_g g) + BN(W_x x))))); returns x*psi, psi."""
    g1 = _bn(sd, f"{name}.W_g.1", _conv(sd, f"{name}.W_g.0", g, 0))
    x1 = _bn(sd, f"{name}.W_x.1", _conv(sd, f"{name}.W_x.0", x, 0))
    psi = torch.sigmoid(_bn(sd, f"{name}.psi.1", _conv(sd, f"{name}.psi.0", F.relu(g1 + x1), 0)))
    return x * psi, psi


def attu_net_oracle(sd: dict, x: torch.Tensor):
    """AttU_Net.forward of the original repository, from state-dict tensors alone.

    Returns ``(d1, [psi of Att2, Att3, Att4, Att5])``: the logits and the gate maps, finest first.
    """
    pool = F.max_pool2d if x.dim() == 4 else F.max_pool3d
    x1 = _conv_block(sd, "Conv1", x)
    x2 = _conv_block(sd, "Conv2", pool(x1, kernel_size=2, stride=2))
    x3 = _conv_block(sd, "Conv3", pool(x2, kernel_size=2, stride=2))
    x4 = _conv_block(sd, "Conv4", pool(x3, kernel_size=2, stride=2))
    x5 = _conv_block(sd, "Conv5", pool(x4, kernel_size=2, stride=2))

    d5 = _up_conv(sd, "Up5", x5)
    x4, a5 = _attention(sd, "Att5", g=d5, x=x4)
    d5 = _conv_block(sd, "Up_conv5", torch.cat((x4, d5), dim=1))

    d4 = _up_conv(sd, "Up4", d5)
    x3, a4 = _attention(sd, "Att4", g=d4, x=x3)
    d4 = _conv_block(sd, "Up_conv4", torch.cat((x3, d4), dim=1))

    d3 = _up_conv(sd, "Up3", d4)
    x2, a3 = _attention(sd, "Att3", g=d3, x=x2)
    d3 = _conv_block(sd, "Up_conv3", torch.cat((x2, d3), dim=1))

    d2 = _up_conv(sd, "Up2", d3)
    x1, a2 = _attention(sd, "Att2", g=d2, x=x1)
    d2 = _conv_block(sd, "Up_conv2", torch.cat((x1, d2), dim=1))

    d1 = _conv(sd, "Conv_1x1", d2, 0)
    return d1, [a2, a3, a4, a5]


def original_key_names(img_ch_dims: int = 2) -> set[str]:
    """Every state-dict key of the original AttU_Net (5 levels), written out by hand."""
    keys = set()

    def bn(p):
        keys.update(
            f"{p}.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        )

    def conv(p, bias=True):
        keys.add(f"{p}.weight")
        if bias:
            keys.add(f"{p}.bias")

    def conv_block(n):
        conv(f"{n}.conv.0"), bn(f"{n}.conv.1"), conv(f"{n}.conv.3"), bn(f"{n}.conv.4")

    for i in range(1, 6):
        conv_block(f"Conv{i}")
    for i in range(5, 1, -1):
        conv(f"Up{i}.up.1"), bn(f"Up{i}.up.2")
        for part in ("W_g", "W_x", "psi"):
            conv(f"Att{i}.{part}.0"), bn(f"Att{i}.{part}.1")
        conv_block(f"Up_conv{i}")
    conv("Conv_1x1")
    return keys


# ---- tests ----------------------------------------------------------------------------------


def _spec(dims, img_ch, output_ch, features=(4, 8, 16, 32, 64)):
    return lee_spec(dims, img_ch, output_ch, features)


CASES = {
    "2D-img3-out1": (2, 3, 1, (32, 48)),
    "2D-img3-out4": (2, 3, 4, (32, 32)),
    "3D-img1-out2": (3, 1, 2, (16, 32, 16)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_attu_net_matches_functional_oracle(name, tmp_path, randomize_bn):
    dims, img_ch, output_ch, size = CASES[name]
    built = randomize_bn(build(_spec(dims, img_ch, output_ch)), seed=dims + output_ch).eval()
    path = tmp_path / "attu.pth"
    torch.save(built.state_dict(), path)
    sd = torch.load(path, weights_only=True)

    model = na.load_model(path)
    spec = model.spec
    assert spec.family == "leejunhyun" and spec.variant == "attu_net"
    assert spec.spatial_dims == dims
    assert spec.in_channels == img_ch and spec.out_channels == output_ch
    assert tuple(spec.features) == (4, 8, 16, 32, 64)
    assert spec.output == ("sigmoid" if output_ch == 1 else "softmax")

    x = torch.randn(2, img_ch, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_logits, ref_maps = attu_net_oracle(sd, x)
        logits = model(x)
        logits2, maps = model.forward_with_attention(x)
    err = float((logits - ref_logits).abs().max())
    print(f"\n[leejunhyun {dims}D {name}] logits max abs error vs oracle {err:.3e}")
    assert tuple(logits.shape) == (2, output_ch, *size)
    assert err <= 1e-5
    assert torch.equal(logits, logits2)

    assert len(maps) == len(spec.gates) == 4
    for k, (alpha, ref, geometry) in enumerate(zip(maps, ref_maps, spec.gates, strict=True)):
        assert geometry.stride == (2**k,) * dims
        grid = tuple(math.ceil(n / s) for n, s in zip(size, geometry.stride, strict=True))
        assert tuple(alpha.shape) == tuple(ref.shape) == (2, 1, *grid)
        gerr = float((alpha - ref).abs().max())
        print(f"[leejunhyun {dims}D {name}] Att{k + 2} {grid} max abs error {gerr:.3e}")
        assert gerr <= 1e-5
        assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0


@pytest.mark.parametrize("dims", [2, 3])
def test_state_dict_keys_are_the_originals(dims):
    model = build(_spec(dims, 3, 1))
    keys = set(model.state_dict())
    for name in (
        "Att2.psi.0.weight",
        "Att2.psi.1.running_var",
        "Att5.W_g.0.weight",
        "Att5.W_x.1.bias",
        "Up5.up.1.weight",
        "Up5.up.2.weight",
        "Up2.up.1.bias",
        "Conv1.conv.0.weight",
        "Conv1.conv.4.running_mean",
        "Conv5.conv.3.weight",
        "Up_conv2.conv.0.weight",
        "Up_conv5.conv.4.bias",
        "Conv_1x1.weight",
        "Conv_1x1.bias",
    ):
        assert name in keys, name
    assert keys == original_key_names()
    sd = model.state_dict()
    # the original's shapes: Up5 maps 64 -> 32, Att5 has F_int = 16, Up_conv5 takes 2*32
    assert tuple(sd["Up5.up.1.weight"].shape[:2]) == (32, 64)
    assert tuple(sd["Att5.W_g.0.weight"].shape[:2]) == (16, 32)
    assert tuple(sd["Att2.psi.0.weight"].shape[:2]) == (1, 2)
    assert tuple(sd["Up_conv5.conv.0.weight"].shape[:2]) == (32, 64)
    assert tuple(sd["Conv_1x1.weight"].shape) == (1, 4) + (1,) * dims


def test_native_roundtrip(tmp_path, randomize_bn):
    built = randomize_bn(build(_spec(2, 3, 4)), seed=1).eval()
    torch.save({"state_dict": built.state_dict()}, tmp_path / "attu.pth")
    model = na.load_model(tmp_path / "attu.pth")
    out = na.save_model(
        model, tmp_path / "attu.safetensors", class_names=["bg", "a", "b", "c"], normalization="none"
    )
    again = na.load_model(out)
    assert again.spec.class_names == ("bg", "a", "b", "c")
    assert again.spec.normalization == {"mode": "none"}
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(again(x), built(x))
