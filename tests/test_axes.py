"""Axis order: official and MONAI 3D networks were trained on (x, y, z) arrays, scans in napari
are (z, y, x). predict must hand the network what it was trained on, and bring back the result
(probabilities and gate geometry) in scan order."""

import numpy as np
import pytest
import torch
from helpers import TOL_Q, make_model, monai_spec, official_spec

import napari_attunet as na
from napari_attunet.inference.orientation import network_layout


def test_family_defaults():
    assert official_spec(3, axes="").network_axes == "xyz"
    assert monai_spec(3, axes="").network_axes == "xyz"
    assert official_spec(2, axes="").network_axes == "yx"
    from napari_attunet.models import ModelSpec

    with pytest.raises(ValueError):
        ModelSpec.from_dict({**official_spec(3).to_dict(), "axes": "xxz"})


def test_permutations():
    assert network_layout(official_spec(3, axes="xyz"), 3).permutation == (2, 1, 0)
    assert network_layout(official_spec(3, axes="zyx"), 3).identity
    assert network_layout(official_spec(2, axes="xy"), 3).permutation == (0, 2, 1)  # slices first
    assert network_layout(official_spec(2, axes="yx"), 3).identity


def test_xyz_network_sees_the_transposed_scan():
    spec = official_spec(3, out_ch=3, axes="xyz")
    model = make_model(spec, seed=3)
    rng = np.random.default_rng(0)
    scan = rng.normal(size=(16, 24, 32)).astype(np.float32)  # (z, y, x)
    pred = na.predict(scan, model, normalization="none", precision="fp32")
    assert pred.probabilities.shape == (3, 16, 24, 32)
    x = torch.from_numpy(np.ascontiguousarray(scan.transpose(2, 1, 0)))[None, None]
    with torch.no_grad():
        logits, gates = model.forward_with_attention(x)
    expected = torch.softmax(logits, 1)[0].numpy().transpose(0, 3, 2, 1)
    assert np.abs(pred.probabilities - expected).max() <= TOL_Q
    for got, ref, geometry in zip(pred.gates, gates, spec.gates, strict=True):
        np.testing.assert_allclose(got.data, ref[0].numpy().transpose(0, 3, 2, 1), atol=1e-5)
        assert got.stride == tuple(float(s) for s in geometry.stride[::-1])


def test_anisotropic_gate_geometry_comes_back_in_scan_order():
    # The 3D grid-attention network pools (2, 2, 1) over (x, y, z): no pooling along z.
    spec = official_spec(3, variant="grid_attention", axes="xyz").replace(kernel_size=(3, 3, 1))
    model = make_model(spec, seed=4)
    scan = np.random.default_rng(1).normal(size=(6, 32, 32)).astype(np.float32)
    pred = na.predict(scan, model, normalization="none", precision="fp32")
    assert pred.gates[0].stride == (1.0, 2.0, 2.0)
    assert pred.gates[0].offset == (0.0, 0.5, 0.5)
    assert pred.gates[0].data.shape[1:] == (6, 16, 16)


def test_axes_round_trip_through_native_checkpoints(tmp_path):
    model = make_model(official_spec(3, axes="zyx"), seed=5)
    na.save_model(model, tmp_path / "m.safetensors")
    assert na.load_model(tmp_path / "m.safetensors").spec.axes == "zyx"
    loaded = na.load_model(tmp_path / "m.safetensors", overrides={"axes": "xyz"})
    assert loaded.spec.network_axes == "xyz"


@pytest.mark.parametrize("stride, offset", [(2, 0.0), (4, 0.0), (2, 0.5), (4, 1.5)])
def test_tta_gates_come_back_on_the_unflipped_grid(stride, offset):
    """A map sampled on a flipped tile, put back: each cell holds the value at its own centre."""
    from napari_attunet.inference.tta import unflip_gate
    from napari_attunet.models import GateGeometry

    tile, cells = 32, 32 // stride
    geometry = GateGeometry((stride, stride), (offset, offset), 1)
    # The network on the flipped tile: its cell i sits at flipped position offset + stride*i,
    # that is at original position tile - 1 - (offset + stride*i); the map there is the position.
    flipped_positions = tile - 1 - (offset + stride * np.arange(cells))
    alpha = torch.tensor(flipped_positions, dtype=torch.float32).view(1, 1, cells, 1)
    alpha = alpha.expand(1, 1, cells, cells).clone()
    back = unflip_gate(alpha, (2,), geometry)[0, 0, :, 0].numpy()
    expected = offset + stride * np.arange(cells)
    np.testing.assert_allclose(back[1:], expected[1:], atol=1e-5)
