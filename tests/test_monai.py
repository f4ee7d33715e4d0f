"""MONAI AttentionUnet state dicts: same logits and same gate maps as MONAI itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import napari_attunet as na

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CONFIGS = {
    # name: (spatial_dims, in, out, channels, strides, kernel_size, up_kernel_size, input size)
    "2D-3lv-k3": (2, 1, 2, (4, 8, 16), (2, 2), 3, 3, (32, 24)),
    "3D-4lv-k3": (3, 2, 3, (4, 8, 16, 32), (2, 2, 2), 3, 3, (16, 16, 24)),
    "2D-5lv-k5-up3-sigmoid": (2, 3, 1, (4, 8, 16, 32, 64), (2, 2, 2, 2), 5, 3, (32, 32)),
    "3D-2lv-up5": (3, 1, 2, (4, 8), (2,), 3, 5, (8, 12, 10)),
    "3D-3lv-k331-up331": (3, 1, 3, (3, 6, 12), (2, 2), (3, 3, 1), (3, 3, 1), (16, 8, 4)),
}


def _monai_net(dims, cin, cout, channels, strides, kernel, up_kernel, randomize_bn, seed=0):
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(seed)
    net = monai_nets.AttentionUnet(
        spatial_dims=dims,
        in_channels=cin,
        out_channels=cout,
        channels=channels,
        strides=strides,
        kernel_size=kernel,
        up_kernel_size=up_kernel,
    )
    return randomize_bn(net, seed=seed + 1).eval()


def _monai_run(net, x):
    """MONAI's logits and its gate maps (outputs of ``*.attention.psi``), finest first."""
    captured = []
    handles = [
        module.register_forward_hook(
            lambda m, a, out, name=name: captured.append((name, out.detach().clone()))
        )
        for name, module in net.named_modules()
        if name.endswith("attention.psi")
    ]
    try:
        with torch.no_grad():
            logits = net(x)
    finally:
        for h in handles:
            h.remove()
    # finest first: larger spatial size first; ties broken by nesting depth (outer = finer)
    captured.sort(key=lambda item: (-item[1][0, 0].numel(), len(item[0])))
    return logits, [m for _, m in captured]


def _err(a, b):
    assert a.shape == b.shape, f"{tuple(a.shape)} != {tuple(b.shape)}"
    return float((a.double() - b.double()).abs().max())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_monai_state_dict_matches_monai(name, tmp_path, randomize_bn):
    dims, cin, cout, channels, strides, kernel, up_kernel, size = CONFIGS[name]
    net = _monai_net(dims, cin, cout, channels, strides, kernel, up_kernel, randomize_bn, seed=len(name))
    path = tmp_path / f"{name}.pth"
    torch.save(net.state_dict(), path)
    model = na.load_model(path)

    spec = model.spec
    assert spec.family == "monai" and spec.variant == "attention_unet"
    assert spec.spatial_dims == dims
    assert spec.in_channels == cin and spec.out_channels == cout
    assert tuple(spec.features) == tuple(channels)
    assert spec.output == ("sigmoid" if cout == 1 else "softmax")
    expand = lambda k: tuple(k) if isinstance(k, tuple) else (k,) * dims
    assert spec.kernel_size == expand(kernel)
    assert spec.up_kernel_size == expand(up_kernel)
    assert len(spec.gates) == len(channels) - 1
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in net.parameters())

    x = torch.randn(2, cin, *size, generator=torch.Generator().manual_seed(11))
    ref_logits, ref_maps = _monai_run(net, x)
    with torch.no_grad():
        logits = model(x)
        logits2, maps = model.forward_with_attention(x)
    err = _err(logits, ref_logits)
    print(f"\n[monai {dims}D {name}] logits max abs error {err:.3e}")
    assert err <= 1e-5
    assert torch.equal(logits, logits2)

    assert len(maps) == len(ref_maps) == len(channels) - 1
    for k, (alpha, ref, geometry) in enumerate(zip(maps, ref_maps, spec.gates, strict=True)):
        grid = tuple(math.ceil(n / s) for n, s in zip(size, geometry.stride, strict=True))
        assert tuple(alpha.shape) == (2, 1, *grid), f"gate {k}"
        gerr = _err(alpha, ref)
        print(f"[monai {dims}D {name}] gate {k} {tuple(alpha.shape[2:])} max abs error {gerr:.3e}")
        assert gerr <= 1e-5
        assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0


NONDEFAULT = {
    # name: (dims, channels, strides as given to MONAI, override, input size)
    "2D-strides-2-1": (2, (4, 8, 16), (2, 1), [2, 1], (16, 24)),
    "3D-strides-221": (3, (4, 8, 16), ((2, 2, 1), (2, 2, 1)), [[2, 2, 1], [2, 2, 1]], (16, 16, 6)),
}


@pytest.mark.parametrize("name", list(NONDEFAULT))
def test_monai_nondefault_strides_with_overrides(name, tmp_path, randomize_bn):
    dims, channels, strides, override, size = NONDEFAULT[name]
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(5))
    try:
        net = _monai_net(dims, 1, 2, channels, strides, 3, 3, randomize_bn, seed=9)
        ref_logits, ref_maps = _monai_run(net, x)
    except Exception as exc:  # MONAI itself cannot build or run this configuration
        pytest.skip(f"MONAI does not run strides {strides}: {exc}")
    path = tmp_path / "strided.pth"
    torch.save(net.state_dict(), path)

    model = na.load_model(path, overrides={"strides": override})
    expected = tuple(tuple(s) if isinstance(s, (list, tuple)) else (s,) * dims for s in override)
    assert model.spec.strides == expected
    with torch.no_grad():
        logits, maps = model.forward_with_attention(x)
    err = _err(logits, ref_logits)
    print(f"\n[monai {dims}D {name}] logits max abs error {err:.3e}")
    assert err <= 1e-5
    assert len(maps) == len(ref_maps)
    for alpha, ref, geometry in zip(maps, ref_maps, model.spec.gates, strict=True):
        grid = tuple(math.ceil(n / s) for n, s in zip(size, geometry.stride, strict=True))
        assert tuple(alpha.shape[2:]) == grid
        assert _err(alpha, ref) <= 1e-5

    # Without the override the strides are taken as 2: the architecture is then wrong.
    default = na.load_model(path)
    assert default.spec.strides != expected


def test_monai_native_roundtrip_keeps_strides(tmp_path, randomize_bn):
    net = _monai_net(2, 1, 2, (4, 8, 16), (2, 1), 3, 3, randomize_bn, seed=2)
    torch.save(net.state_dict(), tmp_path / "m.pth")
    model = na.load_model(tmp_path / "m.pth", overrides={"strides": [2, 1]})
    out = na.save_model(model, tmp_path / "m.safetensors", class_names=["bg", "fg"])
    again = na.load_model(out)
    assert again.spec.strides == ((2, 2), (1, 1))
    assert again.spec.class_names == ("bg", "fg")
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
        np.testing.assert_array_equal(again(x).numpy(), net(x).numpy())
