"""Official Attention U-Net (ozan-oktay/Attention-Gated-Networks): golden outputs and variants."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_spec

import napari_attunet as na
from napari_attunet.models import build
from napari_attunet.models.official import official_strides

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FIXTURE_STEM = "oktay_unet_CT_single_att_dsv_3D"

ARCH_FIELDS = (
    "family",
    "variant",
    "spatial_dims",
    "in_channels",
    "out_channels",
    "features",
    "output",
    "strides",
    "kernel_size",
    "up_kernel_size",
    "attention_dsample",
    "batchnorm",
    "deconv",
    "gate_mode",
    "align_corners",
)


def _max_err(a, b) -> float:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# ---- the golden fixture -------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    d = fixtures_dir
    return {
        "input": torch.from_numpy(np.load(d / f"{FIXTURE_STEM}.input.npy")),
        "logits": np.load(d / f"{FIXTURE_STEM}.logits.npy"),
        "attention": [np.load(d / f"{FIXTURE_STEM}.attention{k}.npy") for k in (2, 3, 4)],
        "meta": json.loads((d / f"{FIXTURE_STEM}.json").read_text()),
    }


def _check_against_golden(model, golden, label):
    x = golden["input"]
    with torch.no_grad():
        logits = model(x)
        logits2, maps = model.forward_with_attention(x)
    err = _max_err(logits, golden["logits"])
    print(f"\n[official 3D single_att_dsv {label}] logits max abs error {err:.3e}")
    assert err <= 1e-4
    assert _max_err(logits2, logits) == 0.0
    assert len(maps) == 3
    for k, (got, want) in zip((2, 3, 4), zip(maps, golden["attention"], strict=True), strict=True):
        assert tuple(got.shape) == want.shape, f"attention{k}"
        assert list(want.shape) == golden["meta"]["attention_shapes"][str(k)]
        err = _max_err(got, want)
        print(
            f"[official 3D single_att_dsv {label}] attention{k} {tuple(want.shape)} max abs error {err:.3e}"
        )
        assert err <= 1e-4


def test_fixture_pth_loads_and_reproduces_golden(fixture_pth, golden):
    model = na.load_model(fixture_pth)
    spec = model.spec
    assert spec.family == "official"
    assert spec.variant == "single_att_dsv"
    assert spec.spatial_dims == 3
    assert spec.in_channels == 1
    assert spec.out_channels == 3
    assert spec.output == "softmax"
    assert tuple(spec.features) == (8, 16, 32, 64, 128)
    assert spec.deconv is False  # is_deconv=False in the fixture's constructor arguments
    assert spec.strides == ((2, 2, 2),) * 4
    assert spec.kernel_size == (3, 3, 3) and spec.attention_dsample == (2, 2, 2)
    assert spec.gate_mode == "concatenation" and spec.align_corners is False
    assert [g.heads for g in spec.gates] == [1, 1, 1]
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == golden["meta"]["params"] == 1555542
    _check_against_golden(model, golden, ".pth")


def test_fixture_through_safetensors(fixture_pth, golden, tmp_path):
    model = na.load_model(fixture_pth)
    names = ["background", "liver", "pancreas"]
    out = na.save_model(model, tmp_path / "oktay.safetensors", class_names=names)
    assert out.exists()
    again = na.load_model(out)
    assert again.spec.class_names == tuple(names)
    assert again.spec.class_labels == tuple(names)
    for field in ARCH_FIELDS:
        assert getattr(again.spec, field) == getattr(model.spec, field), field
    x = golden["input"]
    with torch.no_grad():
        a, maps_a = model.forward_with_attention(x)
        b, maps_b = again.forward_with_attention(x)
    assert torch.equal(a, b)
    for ma, mb in zip(maps_a, maps_b, strict=True):
        assert torch.equal(ma, mb)
    _check_against_golden(again, golden, ".safetensors")


# ---- variants without a fixture -------------------------------------------------------------

SMALL = (4, 8, 16, 32, 64)


def _spec(variant, dims, *, deconv=False, in_ch=1, out_ch=3, features=SMALL, batchnorm=True):
    up_kernel = ()
    if deconv:
        up_kernel = (4, 4, 1) if variant == "grid_attention" and dims == 3 else (4,) * dims
    return make_spec(
        "official",
        dims,
        in_ch,
        out_ch,
        features,
        variant,
        axes="",
        up_kernel_size=up_kernel,
        batchnorm=batchnorm,
        deconv=deconv,
    )


VARIANTS = {
    "single_att_dsv-2D": dict(variant="single_att_dsv", dims=2, in_ch=2, out_ch=4),
    "single_att_dsv-3D": dict(variant="single_att_dsv", dims=3),
    "multi_att_dsv-2D": dict(variant="multi_att_dsv", dims=2, out_ch=1),
    "multi_att_dsv-3D": dict(variant="multi_att_dsv", dims=3, out_ch=2),
    "grid_attention-3D-deconv": dict(variant="grid_attention", dims=3, deconv=True),
    "grid_attention-3D-upsample": dict(variant="grid_attention", dims=3, deconv=False),
    "grid_attention-2D": dict(variant="grid_attention", dims=2, out_ch=2),
    "single_att_dsv-3D-no-batchnorm": dict(variant="single_att_dsv", dims=3, batchnorm=False),
}


def _input(spec, seed=1):
    if spec.spatial_dims == 2:
        size = (32, 48)
    elif spec.variant == "grid_attention":
        size = (32, 32, 6)  # pools (2, 2, 1): z is never pooled
    else:
        size = (32, 16, 16)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, spec.in_channels, *size, generator=gen)


def _built(name, randomize_bn):
    kw = dict(VARIANTS[name])
    spec = _spec(kw.pop("variant"), kw.pop("dims"), **kw)
    torch.manual_seed(sum(name.encode()))
    net = randomize_bn(build(spec), seed=len(name)).eval()
    return spec, net


def _save(net, path, how):
    sd = net.state_dict()
    if how == "bare":
        obj = sd
    elif how == "state_dict+module":
        obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    else:  # a training script's full checkpoint
        obj = {"model_state_dict": sd, "epoch": 12, "best_dice": 0.8}
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("how", ["bare", "state_dict+module", "model_state_dict"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_roundtrip(name, how, tmp_path, randomize_bn):
    spec, net = _built(name, randomize_bn)
    path = _save(net, tmp_path / f"{name}.pth", how)
    model = na.load_model(path)

    for field in ARCH_FIELDS:
        assert getattr(model.spec, field) == getattr(spec, field), field
    assert model.spec.strides == official_strides(spec.variant, spec.spatial_dims)
    if name.startswith("grid_attention-3D"):
        assert model.spec.strides == ((2, 2, 1),) * 4
        assert model.spec.kernel_size == (3, 3, 1)

    x = _input(spec)
    with torch.no_grad():
        ref_logits, ref_maps = net.forward_with_attention(x)
        logits, maps = model.forward_with_attention(x)
        plain = model(x)
    assert tuple(logits.shape) == (x.shape[0], spec.out_channels, *x.shape[2:])
    assert torch.equal(plain, logits)
    err = _max_err(logits, ref_logits)
    if how == "bare":
        print(f"\n[official {name}] logits max abs error vs built net {err:.3e}")
    assert err == 0.0

    heads = 2 if spec.variant == "multi_att_dsv" else 1
    gates = model.spec.gates
    assert len(gates) == len(maps) == len(ref_maps) == 3
    for k, (alpha, ref, geometry) in enumerate(zip(maps, ref_maps, gates, strict=True)):
        assert geometry.heads == heads
        grid = tuple(math.ceil(n / s) for n, s in zip(x.shape[2:], geometry.stride, strict=True))
        assert tuple(alpha.shape) == (x.shape[0], heads, *grid), f"gate {k}"
        assert torch.equal(alpha, ref)
        assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0
        assert float(alpha.std()) > 0.0, "a constant map: the gate does nothing"
    # finest first
    strides = [g.stride for g in gates]
    assert strides == sorted(strides)
    assert strides[0] == spec.strides[0]


def test_gate_stride_geometry():
    spec = _spec("grid_attention", 3)
    assert [g.stride for g in spec.gates] == [(2, 2, 1), (4, 4, 1), (8, 8, 1)]
    assert spec.total_stride == (16, 16, 1)
    spec = _spec("single_att_dsv", 2)
    assert [g.stride for g in spec.gates] == [(2, 2), (4, 4), (8, 8)]
    assert [g.offset for g in spec.gates] == [(0.5, 0.5), (1.5, 1.5), (3.5, 3.5)]


@pytest.mark.parametrize("dims,variant", [(3, "single_att_dsv"), (2, "multi_att_dsv"), (3, "grid_attention")])
def test_gate_modes(dims, variant, randomize_bn, tmp_path):
    spec = _spec(variant, dims)
    torch.manual_seed(3)
    base = randomize_bn(build(spec), seed=3).eval()
    path = tmp_path / "net.pth"
    torch.save(base.state_dict(), path)
    x = _input(spec, seed=4)
    maps_by_mode = {}
    for mode in ("concatenation", "concatenation_debug", "concatenation_residual"):
        net = build(spec.replace(gate_mode=mode))
        net.load_state_dict(base.state_dict())
        net.eval()
        loaded = na.load_model(path, overrides={"gate_mode": mode})
        assert loaded.spec.gate_mode == mode
        with torch.no_grad():
            logits, maps = net.forward_with_attention(x)
            logits_l, maps_l = loaded.forward_with_attention(x)
        assert torch.equal(logits, logits_l)
        assert torch.isfinite(logits).all()
        assert tuple(logits.shape[2:]) == tuple(x.shape[2:])
        for alpha, alpha_l in zip(maps, maps_l, strict=True):
            assert torch.equal(alpha, alpha_l)
            assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0
        maps_by_mode[mode] = maps
    for a, b in zip(maps_by_mode["concatenation"], maps_by_mode["concatenation_residual"], strict=True):
        assert not torch.allclose(a, b)
    for a, b in zip(maps_by_mode["concatenation"], maps_by_mode["concatenation_debug"], strict=True):
        assert not torch.allclose(a, b)


def test_residual_mode_is_a_softmax_over_the_coarse_grid(randomize_bn):
    spec = _spec("single_att_dsv", 2).replace(gate_mode="concatenation_residual")
    net = randomize_bn(build(spec), seed=5).eval()
    x = _input(spec, seed=6)
    seen = []

    def hook(module, args, output):
        seen.append(output)

    net.attentionblock2.gate_block_1.psi.register_forward_hook(hook)
    with torch.no_grad():
        _, maps = net.forward_with_attention(x)
    q = seen[0]  # psi's output on the coarse grid, before the softmax
    coarse = F.softmax(q.flatten(2), dim=2).view_as(q)
    assert torch.allclose(coarse.flatten(2).sum(2), torch.ones(q.shape[:2]), atol=1e-5)
    # the returned map is that softmax, resampled (bilinear, align_corners=False) to conv2's grid
    expected = F.interpolate(coarse, size=maps[0].shape[2:], mode="bilinear", align_corners=False)
    assert tuple(q.shape[2:]) == tuple(n // 2 for n in maps[0].shape[2:])
    assert torch.allclose(maps[0], expected, atol=1e-7)


def test_input_not_a_multiple_of_16(randomize_bn):
    spec = _spec("single_att_dsv", 3, out_ch=2)
    net = randomize_bn(build(spec), seed=7).eval()
    size = (37, 29, 21)
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        logits = net(x)
        logits2, maps = net.forward_with_attention(x)
        padded = net(F.pad(x, (0, 32 - 21, 0, 32 - 29, 0, 48 - 37)))
    assert tuple(logits.shape) == (1, 2, *size)
    assert torch.equal(logits, logits2)
    assert torch.allclose(logits, padded[:, :, :37, :29, :21], atol=1e-6)
    assert len(maps) == len(spec.gates) == 3
    for alpha, geometry in zip(maps, spec.gates, strict=True):
        grid = tuple(math.ceil(n / s) for n, s in zip(size, geometry.stride, strict=True))
        assert tuple(alpha.shape) == (1, 1, *grid)
        assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0
    assert [tuple(m.shape[2:]) for m in maps] == [(19, 15, 11), (10, 8, 6), (5, 4, 3)]
