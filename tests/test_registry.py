"""The family registry: every row keeps the promises a new family must keep (see its docstring)."""

from __future__ import annotations

import pytest
import torch

from napari_attunet.inference.preprocess import resolve_normalization
from napari_attunet.models import FAMILIES, REGISTRY, build, family
from napari_attunet.models.checkpoint import detect

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _default(name: str, dims: int):
    features = (4, 8, 16, 32, 64) if name == "official" else (4, 8, 16)
    return REGISTRY[name].default_spec(dims, 2, 3, features)


@pytest.mark.parametrize("dims", (2, 3))
@pytest.mark.parametrize("name", FAMILIES)
def test_each_row_builds_is_detected_and_places_its_gates(name, dims):
    row = REGISTRY[name]
    spec = _default(name, dims)
    model = build(spec).eval()
    assert type(model).__name__ == row.network
    assert set(row.signature) <= set(model.state_dict())

    detected, _ = detect(model.state_dict())
    assert detected.family == name and detected.variant == spec.variant
    assert (detected.spatial_dims, detected.in_channels, detected.out_channels) == (dims, 2, 3)
    assert detected.features == spec.features and detected.strides == spec.strides

    size = tuple(2 * s for s in spec.total_stride)
    with torch.no_grad():
        logits, maps = model.forward_with_attention(torch.randn(1, 2, *size))
    assert tuple(logits.shape) == (1, 3, *size)
    assert len(maps) == len(spec.gates) > 0
    for alpha, gate in zip(maps, spec.gates, strict=True):
        assert alpha.shape[1] == gate.heads
        assert tuple(alpha.shape[2:]) == tuple(n // s for n, s in zip(size, gate.stride, strict=True))
        assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0


@pytest.mark.parametrize("name", FAMILIES)
def test_defaults_the_checkpoint_leaves_unsaid_come_from_the_row(name):
    row = REGISTRY[name]
    spec = _default(name, 3)
    assert spec.network_orientation == row.orientation
    assert spec.network_axes == row.axes_3d
    assert resolve_normalization(None, spec).mode == row.normalization
    assert _default(name, 2).network_axes == "yx"


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match="official"):
        family("unet_plus_plus")
